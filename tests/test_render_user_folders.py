"""Your own templates and cards: folders named by render.template_paths and render.catalog_paths are read
alongside Loom's by `loom render` and by `loom templates lint|stats|preview` and `loom catalog list`; an id
or a name that is already taken is refused naming both files."""
from __future__ import annotations

import json
import textwrap

import pyarrow.parquet as pq
import pytest

from catalog.cards import CARDS_DIR, use_card_folders
from jobs.cli import main
from pipelines.shapes_world.formats.samples import sample_entry
from templates.library import TASKS_DIR, use_template_folders

FRENCH = [("Que voit-on ici ? {{ question }}", "none"), ("Question : {{ question }} Réponse courte :", "short")]


@pytest.fixture(autouse=True)
def only_loom_s_own_afterwards():
    yield
    use_template_folders([])
    use_card_folders([])


def template_folder(folder, templates, task="vqa"):
    """A folder of the user's templates: one task file in the format of templates/tasks/."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(f'  - {{id: {tid}, lang: {lang}, brevity: {brevity}, prompt: "<image>\\n{prompt}"}}\n'
                    for tid, lang, brevity, prompt in templates)
    (folder / f"{task}.yaml").write_text(f'task: {task}\nresponse: "{{{{ answer }}}}"\ntemplates:\n{lines}',
                                         encoding="utf-8")
    return folder


def french(folder):
    return template_folder(folder, [(f"mine_fr_{k:02d}", "fr", brevity, prompt)
                                    for k, (prompt, brevity) in enumerate(FRENCH, 1)])


def card_folder(folder, name="vqa_zh_mine", lang="zh"):
    """A folder holding the user's card for a Chinese file in VQAv2's format, read by Loom's VQAv2 adapter."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(textwrap.dedent(f"""\
        name: {name}
        title: Our Chinese questions about COCO, in VQAv2's format
        tasks: [vqa]
        held: held-in
        lang: {lang}
        instructblip: {{short_answer: true}}
        splits: {{train: {{size: null, unit: questions}}}}
        native_format: {{name: VQA v2 JSON (questions + annotations)}}
        source: our annotators
        license: {{annotations: internal}}
        citation: none
        adapter: catalog.adapters.vqav2.read_vqav2
        """), encoding="utf-8")
    return folder


def write_config(path, datasets, **render):
    path.write_text(json.dumps({"render": {"ray": "never", "datasets": datasets, **render}}), encoding="utf-8")
    return str(path)


def refusal(tmp_path, capsys, datasets, **render) -> str:
    """What `loom render` says on stderr when it refuses the config (exit 2) before any work."""
    config = write_config(tmp_path / "render.yaml", datasets, **render)
    assert main(["render", config, "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run" / "render").exists()
    return capsys.readouterr().err


def rows_of(out):
    manifest = json.loads((out / "render" / "manifest.json").read_text())
    return manifest, [r for name in manifest["files"] for r in pq.read_table(out / "render" / name).to_pylist()]


@pytest.fixture(scope="module")
def vqav2(tmp_path_factory):
    return sample_entry("vqav2", tmp_path_factory.mktemp("vqav2"))


def test_a_template_folder_gives_a_task_a_language_of_your_own(vqav2, tmp_path):
    config = write_config(tmp_path / "render.yaml", [{**vqav2, "lang": "fr"}],
                          template_paths=[str(french(tmp_path / "mine"))], brevity={"vqav2": 0.5})
    assert main(["render", config, "--out", str(tmp_path / "run")]) == 0
    manifest, rows = rows_of(tmp_path / "run")
    assert {row["template_id"] for row in rows} == {"mine_fr_01", "mine_fr_02"} and {r["lang"] for r in rows} == {"fr"}
    assert manifest["brevity"]["00-vqav2-train"]["short"] == round(0.5 * len(rows) + 1e-9)
    assert all(row["messages"][0]["content"].startswith("<image>\nQue voit-on") for row in rows
               if row["template_id"] == "mine_fr_01")


def test_a_pinned_template_of_your_own_is_found_by_its_id(vqav2, tmp_path):
    mine = template_folder(tmp_path / "mine", [("mine_en_eval", "en", "none", "Answer from the picture: {{ question }}")])
    config = write_config(tmp_path / "render.yaml", [{**vqav2, "template": "mine_en_eval"}], template_paths=[str(mine)])
    assert main(["render", config, "--out", str(tmp_path / "run")]) == 0
    _, rows = rows_of(tmp_path / "run")
    assert rows and all(r["messages"][0]["content"].startswith("<image>\nAnswer from the picture: ") for r in rows)


def test_a_template_with_the_id_of_a_built_in_one_is_refused_naming_both_files(vqav2, tmp_path, capsys):
    mine = template_folder(tmp_path / "mine", [("vqa_en_03", "en", "none", "{{ question }}")])
    err = refusal(tmp_path, capsys, [vqav2], template_paths=[str(mine)])
    assert err.startswith("loom: config error: render.template_paths: template id 'vqa_en_03' is in both ")
    assert f"{TASKS_DIR / 'vqa.yaml'} and {mine.resolve() / 'vqa.yaml'}" in err


def test_a_template_folder_that_does_not_exist_is_named(vqav2, tmp_path, capsys):
    err = refusal(tmp_path, capsys, [vqav2], template_paths=[str(tmp_path / "nowhere")])
    assert f"render.template_paths: template folder {tmp_path / 'nowhere'}: no such folder" in err


def test_templates_stats_lint_and_preview_read_the_config_s_folders(vqav2, tmp_path, capsys):
    mine = french(tmp_path / "mine")
    template_folder(mine, [("mine_cap_en_01", "en", "none", "Describe it briefly.")], task="captioning")
    config = write_config(tmp_path / "render.yaml", [{**vqav2, "lang": "fr"}], template_paths=[str(mine)])
    assert main(["templates", "stats", "--config", config]) == 0
    stats = capsys.readouterr().out
    assert any(line.split()[:4] == ["vqa", "fr", "2", "1/0/1"] for line in stats.splitlines())
    assert main(["templates", "lint", "--config", config]) == 1
    lint = capsys.readouterr().out
    assert "captioning: template mine_cap_en_01 is marked brevity none but its wording asks for a short answer" in lint
    assert "vqa: 2 short and open fr templates to draw from; expected 10-15" in lint
    assert main(["templates", "preview", "vqa", "--lang", "fr", "-n", "2", "--config", config]) == 0
    assert capsys.readouterr().out.count("(fr, brevity") == 2


def test_a_card_folder_adds_a_dataset_render_reads_through_its_adapter_in_its_language(vqav2, tmp_path, capsys):
    cards = card_folder(tmp_path / "cards")
    entry = {**vqav2, "card": "vqa_zh_mine"}
    config = write_config(tmp_path / "render.yaml", [entry], catalog_paths=[str(cards)])
    assert main(["render", config, "--out", str(tmp_path / "run")]) == 0
    manifest, rows = rows_of(tmp_path / "run")
    assert {(r["dataset"], r["lang"]) for r in rows} == {("vqav2", "zh")}  # its adapter names the format
    assert all(r["template_id"].startswith("vqa_zh_") for r in rows)
    assert manifest["brevity"]["00-vqa_zh_mine-train"]["share_asked"] == {"short": 0.6, "long": 0.0}
    assert main(["catalog", "list", "--config", config, "--task", "vqa"]) == 0
    assert "vqa_zh_mine" in capsys.readouterr().out


def test_a_card_with_the_name_of_a_built_in_one_is_refused_naming_both_files(vqav2, tmp_path, capsys):
    cards = card_folder(tmp_path / "cards", name="vizwiz")
    err = refusal(tmp_path, capsys, [vqav2], catalog_paths=[str(cards)])
    assert err.startswith("loom: config error: render.catalog_paths: card 'vizwiz' is in both ")
    assert f"{CARDS_DIR.resolve() / 'vizwiz.yaml'} and {cards.resolve() / 'vizwiz.yaml'}" in err


def test_a_malformed_card_of_your_own_is_named_before_any_work(vqav2, tmp_path, capsys):
    cards = card_folder(tmp_path / "cards")
    (cards / "broken.yaml").write_text("name: broken\ntitle: no tasks\n")
    err = refusal(tmp_path, capsys, [vqav2], catalog_paths=[str(cards)])
    assert f"render.catalog_paths: {cards.resolve() / 'broken.yaml'}: missing field(s)" in err


def test_ray_workers_read_the_same_folders_as_a_render_here(vqav2, tmp_path):
    from jobs.render import run_render

    settings = {"datasets": [{**vqav2, "lang": "fr"}, {**vqav2, "card": "vqa_zh_mine"}], "part_records": 5,
                "template_paths": [str(french(tmp_path / "mine"))], "catalog_paths": [str(card_folder(tmp_path / "cards"))]}
    here = run_render({"render": {**settings, "ray": "never"}}, tmp_path / "here", log=lambda *_: None)
    on_ray = run_render({"render": {**settings, "ray": "always"}}, tmp_path / "ray", log=lambda *_: None)
    assert on_ray["on_ray"] and on_ray["files"] == here["files"]
    assert rows_of(tmp_path / "ray")[1] == rows_of(tmp_path / "here")[1]
    assert {r["template_id"].rsplit("_", 1)[0] for r in rows_of(tmp_path / "ray")[1]} == {"mine_fr", "vqa_zh"}
