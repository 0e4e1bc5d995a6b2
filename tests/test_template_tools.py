"""`loom templates preview` and `loom templates stats`: what template authors see."""
from __future__ import annotations

import re

import pytest
import yaml

from jobs.cli import main as loom
from pipelines.shapes_world.formats.vizwiz import write_vizwiz
from templates.library import load_task_templates


def test_preview_shows_examples_in_the_chat_format_with_the_target_marked(capsys):
    assert loom(["templates", "preview", "vqa", "-n", "3", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    examples = [block for block in out.split("\n\n") if block.startswith("── ")]
    ids = {t.id for t in load_task_templates("vqa")}
    assert len(examples) == 3
    for block in examples:
        header, text = block.split("\n", 1)
        assert header.split()[1] in ids and re.search(r" · (vqav2|vizwiz):train:", header)  # the vqa datasets' fixtures
        assert text.startswith("<s>A chat between") and "USER: <image>\n" in text
        assert re.search(r"ASSISTANT:▶ [^◀]+◀▶</s>◀$", text)  # only the answer and end of turn are trained on


def test_preview_is_deterministic_by_seed(capsys):
    loom(["templates", "preview", "captioning", "--lang", "zh", "-n", "2", "--seed", "4"])
    first = capsys.readouterr().out
    loom(["templates", "preview", "captioning", "--lang", "zh", "-n", "2", "--seed", "4"])
    assert re.sub(r"/tmp/\S+", "", capsys.readouterr().out) == re.sub(r"/tmp/\S+", "", first)
    assert "cap_zh_" in first


def test_preview_draws_records_from_a_render_config(tmp_path, capsys):
    fixture = write_vizwiz(tmp_path / "vizwiz", seed=2, scenes=4)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"render": {"datasets": [
        {"card": "vizwiz", "annotation_file": fixture["files"]["val"], "image_root": fixture["image_folders"]["val"],
         "split": "val"}]}}))
    assert loom(["templates", "preview", "vqa", "--config", str(config), "--dataset", "vizwiz", "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("· vizwiz:val:") == 2


def test_preview_in_a_language_without_templates_says_so(capsys):
    assert loom(["templates", "preview", "vqa", "--lang", "fr"]) == 2
    assert "no 'fr' templates for task 'vqa'" in capsys.readouterr().err


def test_stats_adds_up_the_brevity_of_every_task_per_language(capsys):
    from templates.authoring import language_totals, template_stats

    assert loom(["templates", "stats"]) == 0
    out = capsys.readouterr().out
    for total in language_totals(template_stats()):
        b = total["brevity"]
        assert f"{total['templates']:>9}  {b['short']}/{b['long']}/{b['none']}" in out
    assert [t["lang"] for t in language_totals(template_stats())] == ["en", "zh"]
    assert "0.692 for captions and 0.600 for question answering" in out


def test_stats_gives_counts_brevity_and_lengths_per_task_and_language(capsys):
    assert loom(["templates", "stats"]) == 0
    lines = {tuple(line.split()[:2]): line for line in capsys.readouterr().out.splitlines()[1:]}
    vqa_en = [t for t in load_task_templates("vqa") if t.lang == "en"]
    short = sum(t.brevity == "short" for t in vqa_en)
    assert lines[("vqa", "en")].split()[2] == str(len(vqa_en))
    assert f" {short}/0/{len(vqa_en) - short} " in lines[("vqa", "en")]
    assert lines[("captioning", "zh")].endswith("characters")


def test_stats_counts_tokens_with_a_given_tokenizer(tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    assert loom(["templates", "stats", "--tokenizer", str(tmp_path)]) == 0
    assert "tokens" in capsys.readouterr().out


def lint_with(tmp_path, monkeypatch, edit):
    """Lint a copy of the shipped templates after `edit(folder)` changed it."""
    import shutil

    from jobs.template_tools import lint_templates
    from templates import library

    folder = tmp_path / "tasks"
    shutil.copytree(library.TASKS_DIR, folder)
    edit(folder)
    monkeypatch.setattr(library, "TASKS_DIR", folder)
    library.reload_templates()
    try:
        return lint_templates(log=lambda *_: None)
    finally:
        library.reload_templates()


def add_template(folder, task, line):
    path = folder / f"{task}.yaml"
    path.write_text(path.read_text().rstrip("\n") + "\n" + line + "\n")


def test_lint_passes_the_shipped_templates(capsys):
    assert loom(["templates", "lint"]) == 0
    assert "ok: every task's templates pass" in capsys.readouterr().out


def test_lint_names_a_template_that_fails_on_a_dataset_of_its_task(tmp_path, monkeypatch):
    problems = lint_with(tmp_path, monkeypatch, lambda f: add_template(
        f, "vqa", '  - {id: vqa_en_99, lang: en, brevity: none, prompt: "<image>\\nAbout {{ caption }}: {{ question }}"}'))
    assert any(p.startswith("vqa: template vqa_en_99 fails on vizwiz:") and "caption" in p for p in problems)


def test_lint_names_near_copies_and_mislabelled_brevity(tmp_path, monkeypatch):
    def edit(folder):
        add_template(folder, "captioning", '  - {id: cap_en_98, lang: en, brevity: none, '
                                           'prompt: "<image>\\nDescribe the image briefly!"}')
    problems = lint_with(tmp_path, monkeypatch, edit)
    assert "captioning: templates cap_en_02 and cap_en_98 are near copies (1.00 similar)" in problems
    assert any("cap_en_98 is marked brevity none but its wording asks for a short answer" in p for p in problems)


def test_lint_checks_that_long_wording_asks_for_detail_and_only_long_wording_does(tmp_path, monkeypatch):
    def edit(folder):
        add_template(folder, "captioning", '  - {id: capdetail_en_11, lang: en, brevity: long, '
                                           'prompt: "<image>\nWhat is in this picture, tell me?"}')
        add_template(folder, "vqa", '  - {id: vqa_en_97, lang: en, brevity: none, '
                                    'prompt: "<image>\nAnswer in detail: {{ question }}"}')
        add_template(folder, "vqa", '  - {id: vqa_zh_97, lang: zh, brevity: long, prompt: "<image>\n请详细回答：{{ question }}"}')
    problems = lint_with(tmp_path, monkeypatch, edit)
    assert "captioning: template capdetail_en_11 is marked brevity long but its wording does not ask for a " \
           "detailed answer" in problems
    assert "vqa: template vqa_en_97 is marked brevity none but its wording asks for a detailed answer" in problems
    assert "vqa: 1 long zh templates to draw from; expected 10-15 (or none)" in problems
    assert not any("vqa_zh_97 is marked" in p for p in problems)


def test_lint_exits_non_zero_on_a_missing_task(tmp_path, monkeypatch, capsys):
    problems = lint_with(tmp_path, monkeypatch, lambda f: (f / "video_qa.yaml").unlink())
    assert any(p.startswith("video_qa: no templates for task 'video_qa'") for p in problems)


@pytest.mark.parametrize("task", ["vqa", "visual_dialog", "reading_vqa"])
def test_preview_in_chinese_works_for_every_task_and_leaves_no_scratch_folder(task, tmp_path, monkeypatch, capsys):
    import tempfile

    from jobs.cli import main

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert main(["templates", "preview", task, "--lang", "zh", "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("(zh, brevity") == 2 and "_zh_" in out
    assert not list(tmp_path.glob("loom-preview-*"))


def test_preview_says_when_a_dataset_holds_fewer_records_than_asked(capsys):
    from jobs.cli import main

    assert main(["templates", "preview", "classification", "--dataset", "hateful_memes", "-n", "5"]) == 0
    assert "only 2 en classification record(s) to show, of the 5 asked for" in capsys.readouterr().out
