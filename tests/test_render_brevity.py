"""Brevity as a setting: a dataset's share of brevity-worded prompts, realised exactly by seed over its
records however render cuts them into parts, reported in the render manifest; `long` wording where a
dataset's setting asks for detailed answers."""
from __future__ import annotations

import json
import math

import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.cli import main
from jobs.config import ConfigError
from jobs.render import render_settings, run_render
from pipelines.shapes_world.formats.vizwiz import write_vizwiz
from templates.brevity import BrevityDraw, paper_share
from templates.library import template_by_id

quiet = lambda *_: None  # noqa: E731
ROWS = 203  # a prime: no part size divides it


def nearest(x: float) -> int:
    return math.floor(x + 0.5)


@pytest.fixture(scope="module")
def questions(tmp_path_factory):
    """A user's VQA jsonl of 203 questions over three pictures (the generic reader's input)."""
    folder = tmp_path_factory.mktemp("mine")
    for colour in ("red", "green", "blue"):
        Image.new("RGB", (32, 24), colour).save(folder / f"{colour}.jpg")
    lines = [json.dumps({"image": f"{c}.jpg", "question": f"What colour is picture {k}?", "answer": c})
             for k in range(ROWS) for c in [("red", "green", "blue")[k % 3]]]
    (folder / "mine.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "mine.jsonl"


def generic(path, **extra):
    return {"adapter": "generic", "path": str(path), "task": "vqa", "lang": "en", "name": "mine", **extra}


def rendered(out, manifest) -> list[dict]:
    return [row for name in manifest["files"] for row in pq.read_table(out / "render" / name).to_pylist()]


@pytest.mark.parametrize("share", [0.0, 0.25, 0.6, 9 / 13, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_exactly_the_share_of_a_datasets_records_ask_for_brevity(share, seed):
    for total in (1, 2, 13, 1000, 4099):
        labels = BrevityDraw(share, 0.0, total, seed, "vqav2").labels(0, total)
        assert labels.count("short") == nearest(share * total), (share, seed, total)
        assert labels.count("none") == total - nearest(share * total)


def test_short_and_long_shares_are_both_realised_exactly():
    labels = BrevityDraw(0.3, 0.5, 1001, 0, "mine").labels(0, 1001)
    assert (labels.count("short"), labels.count("long"), labels.count("none")) == (300, 501, 200)


@pytest.mark.parametrize("part", [1, 7, 100, 999])
def test_a_record_s_brevity_does_not_depend_on_the_part_it_is_rendered_in(part):
    draw = BrevityDraw(0.6, 0.0, 1000, 3, "vqav2")
    in_parts = [label for first in range(0, 1000, part) for label in draw.labels(first, min(part, 1000 - first))]
    assert in_parts == draw.labels(0, 1000)


def test_which_records_ask_changes_with_the_seed_and_the_dataset_but_not_between_runs():
    chosen = lambda seed, dataset: BrevityDraw(0.5, 0.0, 400, seed, dataset).labels(0, 400)  # noqa: E731
    assert chosen(0, "vqav2") == chosen(0, "vqav2")
    assert chosen(0, "vqav2") != chosen(1, "vqav2") and chosen(0, "vqav2") != chosen(0, "okvqa")


def test_the_paper_s_shares_are_its_table_5_columns():
    assert paper_share("captioning") == 9 / 13 and paper_share("captioning_reading") == 9 / 13
    assert paper_share("vqa") == paper_share("knowledge_vqa") == paper_share("video_qa") == 6 / 10
    assert paper_share("question_generation") == 0


def test_loom_render_realises_the_share_over_a_dataset_rendered_in_parts(questions, tmp_path):
    config = tmp_path / "render.yaml"
    config.write_text("render:\n  ray: never\n  part_records: 10\n  brevity: {mine: 0.25}\n  datasets:\n"
                      f"    - {{adapter: generic, path: '{questions}', task: vqa, lang: en, name: mine}}\n")
    assert main(["render", str(config), "--out", str(tmp_path / "run")]) == 0
    manifest = json.loads((tmp_path / "run" / "render" / "manifest.json").read_text())
    rows = rendered(tmp_path / "run", manifest)
    assert len(manifest["files"]) == 21 and len(rows) == ROWS
    assert sum(row["brevity"] == "short" for row in rows) == nearest(0.25 * ROWS) == 51
    assert all(template_by_id(row["template_id"]).brevity == row["brevity"] for row in rows)
    whole = run_render({"render": {"datasets": [generic(questions)], "brevity": {"mine": 0.25}, "ray": "never"}},
                       tmp_path / "whole", log=quiet)
    assert [(r["id"], r["template_id"]) for r in rendered(tmp_path / "whole", whole)] == \
        [(r["id"], r["template_id"]) for r in rows]


def test_the_manifest_reports_records_worded_counts_and_the_share_asked(questions, tmp_path):
    manifest = run_render({"render": {"datasets": [generic(questions, brevity=0.6)], "ray": "never",
                                      "part_records": 50}}, tmp_path, log=quiet)
    assert manifest["brevity"] == {"00-generic-train": {
        "dataset": "mine", "records": ROWS, "short": 122, "long": 0, "share_asked": {"short": 0.6, "long": 0.0},
        "from": "entry", "asked": {"short": 122, "long": 0, "of": ROWS}}}
    assert sum(d["brevity"].get("short", 0) for d in manifest["datasets"].values()) == 122


def test_an_entry_s_own_brevity_wins_over_render_brevity(questions):
    cfg = render_settings({"render": {"datasets": [generic(questions, brevity={"short": 0.1}), generic(questions)],
                                      "brevity": {"mine": 0.9}}})
    from jobs.render import entry_brevity

    assert entry_brevity(0, cfg["datasets"][0], cfg) == {"short": 0.1, "long": 0.0, "from": "entry"}
    assert entry_brevity(1, cfg["datasets"][1], cfg) == {"short": 0.9, "long": 0.0, "from": "render.brevity"}


@pytest.fixture(scope="module")
def vizwiz(tmp_path_factory):
    return write_vizwiz(tmp_path_factory.mktemp("vizwiz"), seed=5, scenes=6)


def test_a_short_answer_card_takes_the_paper_s_share_and_a_dataset_of_your_own_none(vizwiz, questions, tmp_path):
    card = {"card": "vizwiz", "annotation_file": vizwiz["files"]["train"],
            "image_root": vizwiz["image_folders"]["train"], "split": "train"}
    manifest = run_render({"render": {"datasets": [card, generic(questions)], "ray": "never"}}, tmp_path, log=quiet)
    vizwiz_report, mine = manifest["brevity"]["00-vizwiz-train"], manifest["brevity"]["01-generic-train"]
    assert vizwiz_report["share_asked"] == {"short": 0.6, "long": 0.0} and vizwiz_report["short"] == 4  # of 6
    assert vizwiz_report["from"] == "the paper's share for vqa (short answers)"
    assert mine["short"] == 0 and mine["from"] == "default (answers not marked short)"


def test_a_pinned_template_keeps_its_own_wording_and_is_reported_so(questions, tmp_path):
    manifest = run_render({"render": {"datasets": [generic(questions, template="vqa_en_03")], "ray": "never"}},
                          tmp_path, log=quiet)
    report = manifest["brevity"]["00-generic-train"]
    assert (report["short"], report["share_asked"], report["from"]) == (ROWS, None, "template vqa_en_03")


def test_a_detailed_caption_dataset_asks_for_long_answers_in_long_wording(tmp_path):
    Image.new("RGB", (32, 24), "red").save(tmp_path / "red.jpg")
    rows = [{"image": "red.jpg", "caption": f"A red picture, number {k}, filled edge to edge with one flat red."}
            for k in range(12)]
    (tmp_path / "detailed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    entry = {"adapter": "generic", "path": str(tmp_path / "detailed.jsonl"), "task": "captioning", "lang": "en",
             "brevity": {"long": 1}}
    manifest = run_render({"render": {"datasets": [entry], "ray": "never"}}, tmp_path / "run", log=quiet)
    ids = {row["template_id"] for row in rendered(tmp_path / "run", manifest)}
    assert manifest["brevity"]["00-generic-train"]["long"] == 12 and ids <= {f"capdetail_en_{k:02d}" for k in range(1, 11)}


@pytest.mark.parametrize("brevity, message", [
    (1.5, r"render.datasets\[0\].brevity: 1.5; expected a share of records in \[0, 1\]"),
    ({"short": 0.7, "long": 0.5}, r"the shares add up to more than 1"),
    ({"terse": 0.5}, r"render.datasets\[0\].brevity: \{'terse': 0.5\}; expected"),
    (True, r"render.datasets\[0\].brevity: True; expected a share"),
])
def test_a_brevity_that_is_not_a_share_is_refused_naming_the_key(questions, brevity, message):
    with pytest.raises(ConfigError, match=message):
        render_settings({"render": {"datasets": [generic(questions, brevity=brevity)]}})


def test_render_brevity_naming_no_dataset_of_the_render_is_refused(questions):
    with pytest.raises(ConfigError, match=r"render.brevity: \['vqa2'\] not among render.datasets' datasets \(mine\)"):
        render_settings({"render": {"datasets": [generic(questions)], "brevity": {"vqa2": 0.5}}})


def test_long_wording_for_a_task_without_long_templates_is_refused_before_any_work(questions):
    with pytest.raises(ConfigError, match=r"render.datasets\[0\] \(mine\): a brevity share of 0.5 for long "
                                          r"\(entry\), but task vqa has no long-worded en templates"):
        render_settings({"render": {"datasets": [generic(questions, brevity={"long": 0.5})]}})


def test_brevity_on_an_entry_that_pins_a_template_is_refused(questions):
    with pytest.raises(ConfigError, match=r"render.datasets\[0\].brevity: 0.5, but it pins template vqa_en_03"):
        render_settings({"render": {"datasets": [generic(questions, template="vqa_en_03", brevity=0.5)]}})


def test_the_paper_s_template_set_draws_its_brevity_worded_templates_for_the_short_share(questions, tmp_path):
    manifest = run_render({"render": {"datasets": [generic(questions, brevity=0.6)], "ray": "never",
                                      "template_set": "instructblip_paper"}}, tmp_path, log=quiet)
    rows = rendered(tmp_path, manifest)
    short = {row["template_id"] for row in rows if row["brevity"] == "short"}
    assert len([r for r in rows if r["brevity"] == "short"]) == 122
    assert short == {f"ibp_vqa_{k:02d}" for k in (3, 5, 6, 7, 8, 10)}


def test_a_mixture_s_drawn_records_repeats_included_are_the_records_the_share_is_counted_over(questions, tmp_path):
    manifest = run_render({"render": {"datasets": [generic(questions, brevity=0.25)], "ray": "never",
                                      "mixture": {"total": 400}}}, tmp_path, log=quiet)
    report = manifest["brevity"]["00-generic-train"]
    assert (report["records"], report["short"], report["asked"]) == (400, 100, {"short": 100, "long": 0, "of": 400})
