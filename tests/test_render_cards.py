"""`loom render` on any dataset whose card names an adapter: `{card: NAME, <the adapter's arguments>}`."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from jobs.config import ConfigError
from jobs.render import render_settings, run_render
from pipelines.shapes_world.formats.vizwiz import write_vizwiz


@pytest.fixture(scope="module")
def vizwiz(tmp_path_factory):
    return write_vizwiz(tmp_path_factory.mktemp("vizwiz"), seed=5, scenes=6)


def entry(vizwiz, **extra):
    return {"card": "vizwiz", "annotation_file": vizwiz["files"]["train"],
            "image_root": vizwiz["image_folders"]["train"], "split": "train", **extra}


def test_a_card_entry_renders_through_its_adapter_and_the_task_templates(vizwiz, tmp_path):
    manifest = run_render({"render": {"datasets": [entry(vizwiz)]}}, tmp_path, log=lambda *_: None)
    rows = pq.read_table(tmp_path / "render" / manifest["files"][0]).to_pylist()
    native = json.loads(open(vizwiz["files"]["train"]).read())
    assert manifest["files"] == ["instructions/00-vizwiz-train.parquet"] and len(rows) == len(native) == 6
    for row, question in zip(rows, native):
        assert (row["dataset"], row["task"], row["split"]) == ("vizwiz", "vqa", "train")
        assert row["template_id"].startswith("vqa_en_") and question["question"] in row["messages"][0]["content"]
        assert row["messages"][1]["content"] in [a["answer"] for a in question["answers"]]
        assert row["images"][0]["path"].endswith(question["image"])


def test_the_annotation_file_is_an_input_so_an_edit_re_renders(vizwiz, tmp_path):
    manifest = run_render({"render": {"datasets": [entry(vizwiz)]}}, tmp_path, log=lambda *_: None)
    assert vizwiz["files"]["train"] in manifest["inputs"]


def test_a_card_entry_names_the_keys_its_adapter_reads(vizwiz, tmp_path):
    bad = entry(vizwiz)
    del bad["image_root"]
    with pytest.raises(ConfigError, match=r"render.datasets\[0\]: missing key\(s\) \['image_root'\] for card vizwiz"):
        run_render({"render": {"datasets": [bad]}}, tmp_path)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['images'\]; card vizwiz takes \['annotation_file', "
                                          r"'image_root'\]"):
        run_render({"render": {"datasets": [entry(vizwiz, images="x")]}}, tmp_path)


def test_a_card_whose_task_has_no_templates_is_refused_before_any_work(tmp_path, monkeypatch):
    import shutil

    from templates import library

    shutil.copytree(library.TASKS_DIR, tmp_path / "tasks")
    (tmp_path / "tasks" / "visual_reasoning.yaml").unlink()
    monkeypatch.setattr(library, "TASKS_DIR", tmp_path / "tasks")
    library.reload_templates()
    with pytest.raises(ConfigError, match=r"card gqa is a visual_reasoning dataset: no templates for task"):
        run_render({"render": {"datasets": [{"card": "gqa", "questions_file": "q.json", "image_root": "."}]}},
                   tmp_path)
    library.reload_templates()
    with pytest.raises(ConfigError, match=r"render.datasets\[0\].card: no dataset card named 'vizwizz'"):
        run_render({"render": {"datasets": [{"card": "vizwizz"}]}}, tmp_path)
    assert not (tmp_path / "render").exists()


@pytest.mark.parametrize("pinned", [{}, {"template": "vr_en_01"}])
def test_a_vsr_entry_must_pin_the_statement_template_it_alone_renders_through(pinned):
    # VSR records are statements, not questions: without the pin every record would fail late, in
    # rendering, with 'question' is undefined.
    vsr = {"card": "vsr", "annotation_file": "test.jsonl", "image_root": "images", "split": "test", **pinned}
    with pytest.raises(ConfigError, match=r"render.datasets\[0\]: card vsr renders only through template "
                                          r"vr_eval_statement .*give the entry `template: vr_eval_statement`"):
        render_settings({"render": {"datasets": [vsr]}})
    assert render_settings({"render": {"datasets": [{**vsr, "template": "vr_eval_statement"}]}})["datasets"]


def test_a_split_without_answers_is_refused_rather_than_trained_on_the_word_none(vizwiz, tmp_path):
    test_split = {"card": "vizwiz", "annotation_file": vizwiz["files"]["test"],
                  "image_root": vizwiz["image_folders"]["test"], "split": "test"}
    from templates.library import TemplateError

    with pytest.raises(TemplateError, match=r"vizwiz:test:.*a field it uses is empty \(None fields: \['answer', "):
        run_render({"render": {"datasets": [test_split]}}, tmp_path, log=lambda *_: None)


def test_rendering_on_ray_in_parts_gives_the_records_rendering_here_gives(vizwiz, tmp_path):
    here = run_render({"render": {"datasets": [entry(vizwiz)], "ray": "never"}}, tmp_path / "here",
                      log=lambda *_: None)
    on_ray = run_render({"render": {"datasets": [entry(vizwiz)], "ray": "always", "part_records": 4}},
                        tmp_path / "ray", log=lambda *_: None)
    assert on_ray["on_ray"] and not here["on_ray"]
    assert on_ray["files"] == ["instructions/00-vizwiz-train-00000.parquet", "instructions/00-vizwiz-train-00001.parquet"]
    rows = lambda out, m: [r for f in m["files"] for r in pq.read_table(out / "render" / f).to_pylist()]  # noqa: E731
    assert rows(tmp_path / "ray", on_ray) == rows(tmp_path / "here", here)
    assert on_ray["rows_out"] == here["rows_out"] == 6


def test_auto_takes_ray_only_for_several_datasets_past_the_size_threshold(vizwiz, tmp_path, monkeypatch):
    import jobs.render

    val = {"card": "vizwiz", "annotation_file": vizwiz["files"]["val"], "image_root": vizwiz["image_folders"]["val"],
           "split": "val"}
    two = {"render": {"datasets": [entry(vizwiz), val]}}
    assert not run_render(two, tmp_path / "small", log=lambda *_: None)["on_ray"]  # a few KiB: here
    monkeypatch.setattr(jobs.render, "RAY_AUTO_BYTES", 1000)
    assert not run_render({"render": {"datasets": [entry(vizwiz)]}}, tmp_path / "one", log=lambda *_: None)["on_ray"]
    big = run_render(two, tmp_path / "big", log=lambda *_: None)
    assert big["on_ray"] and big["rows_out"] == 12


def test_an_entry_in_another_language_draws_that_languages_templates(vizwiz, tmp_path):
    """A file in the card's format but in Chinese (`lang: zh`) is labelled Chinese and asked in Chinese."""
    manifest = run_render({"render": {"datasets": [entry(vizwiz, lang="zh")]}}, tmp_path, log=lambda *_: None)
    rows = pq.read_table(tmp_path / "render" / manifest["files"][0]).to_pylist()
    assert {row["lang"] for row in rows} == {"zh"} and all(row["template_id"].startswith("vqa_zh_") for row in rows)
    assert manifest["datasets"]["00-vizwiz-train.parquet"]["languages"] == {"zh": 6}


def test_an_entry_in_a_language_its_task_has_no_templates_for_is_refused(vizwiz):
    with pytest.raises(ConfigError, match=r"render.datasets\[0\].lang: 'fr'; task vqa has templates in \['en', 'zh'\]"):
        render_settings({"render": {"datasets": [entry(vizwiz, lang="fr")]}})
