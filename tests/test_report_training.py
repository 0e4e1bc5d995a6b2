"""`loom report`'s training section: each stage's loss with its learning rate on axes with ticks, held-out
accuracy per question type against the blind baselines as a bar chart, and wrong answers with their images,
read from a shapes-world run that `loom run` trained and evaluated (its stages' predictions.parquet)."""
from __future__ import annotations

import base64
import io
import json
import re

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from jobs.cli import main
from jobs.evaluate import image_reference, render_images
from jobs.report_charts import line_chart, nice_ticks
from jobs.report_train import ALL, THUMBNAIL_PX
from vlm.evaluate import vqa_accuracy
from vlm.images import load_image

from test_export import WORLD

HELD_OUT = 40
# the export tests' world, with more held-out scenes: answers of every question type, some wrong
RUN = {**WORLD, "demo_data": {"seed": 3, "pair_scenes": 0, "train_scenes": 12, "val_scenes": 12},
       "pack": {"preset": "llava-1.5-tiny", "seq_len": 512, "tokenizer": {"train": {"vocab_size": 400}},
                "outputs": {"pretrain": {"datasets": ["vqav2"], "split": "train"},
                            "instruct": {"datasets": ["vqav2"], "split": "train"}}},
       "train": {"batch_size": 2, "stages": {"pretrain": {"max_steps": 3}, "instruct": {"max_steps": 4}},
                 "evaluate": {"datasets": ["vqav2"], "limit": HELD_OUT, "max_new_tokens": 4}}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder: the shapes world rendered, packed and trained through llava-1.5-tiny's two stages (a few
    steps each: a model that gets some answers wrong), evaluated after each, and reported."""
    root = tmp_path_factory.mktemp("report")
    (root / "run.yaml").write_text(yaml.safe_dump(RUN))
    assert main(["run", str(root / "run.yaml"), "--out", str(root / "run")]) == 0
    return root / "run"


@pytest.fixture(scope="module")
def report(run):
    return json.loads((run / "report.json").read_text()), (run / "report.html").read_text()


def predictions(run, stage: str) -> list[dict]:
    return pq.read_table(run / "train" / stage / "predictions.parquet").to_pylist()


def manifest_stages(run) -> dict:
    return {s["name"]: s for s in json.loads((run / "train" / "manifest.json").read_text())["stages"]}


def test_each_stages_accuracy_per_question_type_is_what_its_predictions_say(run, report):
    figures = report[0]["figures"]["train"]["stages"]
    for name, stage in manifest_stages(run).items():
        rows = predictions(run, name)
        for question_type in {r["question_type"] for r in rows}:
            of_type = [r["correct"] for r in rows if r["question_type"] == question_type]
            assert figures[name]["by_question_type"][question_type] == sum(of_type) / len(of_type)
        assert figures[name]["by_question_type"][ALL] == pytest.approx(stage["accuracy"])


def test_the_majority_answer_baseline_is_scored_per_question_type(run, report):
    baselines = json.loads((run / "train" / "manifest.json").read_text())["evaluation"]["baselines"]
    majority = baselines["majority_answer"]
    rows = predictions(run, "instruct")
    for question_type in {r["question_type"] for r in rows}:
        answers = [r["answers"] for r in rows if r["question_type"] == question_type]
        assert majority["by_question_type"][question_type] == vqa_accuracy([majority["answer"]] * len(answers),
                                                                           answers)["exact_match"]
    shown = report[0]["figures"]["train"]["baselines_by_question_type"]
    assert shown[f"majority answer ({majority['answer']!r})"] == {**majority["by_question_type"], ALL: majority["accuracy"]}


def test_the_per_type_majority_baseline_is_shown_per_question_type(run, report):
    type_majority = json.loads((run / "train" / "manifest.json").read_text())["evaluation"]["baselines"][
        "per_question_type_majority"]
    assert set(type_majority["by_question_type"]) == {r["question_type"] for r in predictions(run, "instruct")}
    shown = report[0]["figures"]["train"]["baselines_by_question_type"]["majority answer of its question type"]
    assert shown == {**type_majority["by_question_type"], ALL: type_majority["accuracy"]}


def test_the_accuracy_chart_has_a_bar_per_question_type_for_each_stage_and_baseline(run, report):
    figures, page = report[0]["figures"]["train"], report[1]
    chart = page[page.index("held-out accuracy per question type"):]
    chart = chart[:chart.index("</svg>")]
    bars = re.findall(r"<title>([^<]+): (\d\.\d{3})</title>", chart)
    expected = [(f"after {name}", figures["stages"][name]["by_question_type"]) for name in ("pretrain", "instruct")]
    expected += list(figures["baselines_by_question_type"].items())
    for series, values in expected:
        assert sorted((t, f"{v:.3f}") for t, v in values.items()) == sorted(
            (t, v) for (s, v), t in zip(bars, _groups_of(chart, bars)) if s == series.replace("'", "&#x27;"))
    assert "held-out accuracy (exact match)" in chart and ">0.6<" in chart and ">1.0<" in chart  # the axis and ticks


def _groups_of(chart: str, bars: list) -> list[str]:
    """The question type each bar of the chart is drawn under (the group label before it)."""
    groups, current = [], None
    for piece in re.finditer(r'text-anchor="end" font-family="sans-serif" font-size="11">([^<]+)</text>|<title>', chart):
        if piece[1] is not None:
            current = piece[1]
        else:
            groups.append(current)
    assert len(groups) == len(bars)
    return groups


def test_each_loss_curve_has_axes_with_ticks_and_the_learning_rate_on_a_second_axis(run, report):
    page = report[1]
    for name, stage in manifest_stages(run).items():
        section = page[page.index(f"<h3>stage {name}: trains"):]
        chart = section[:section.index("</svg>")]
        assert 'aria-label="loss by step"' in chart and ">learning rate</text>" in chart
        loss_line, lr_line = re.findall(r'<polyline[^>]*points="([^"]+)"', chart)
        assert len(loss_line.split()) == len(lr_line.split()) == stage["steps"]
        lrs = [r["lr"] for r in map(json.loads, (run / "train" / name / "log.jsonl").read_text().splitlines())]
        assert report[0]["figures"]["train"]["stages"][name]["learning_rate"] == [[i + 1, lr] for i, lr in enumerate(lrs)]
        ticks = re.findall(r'text-anchor="middle" font-family="sans-serif" font-size="11">([\d.,]+)</text>', chart)
        assert ticks[0] in ("0", "1") and all(tick.isdigit() for tick in ticks)  # whole steps, from the first
        assert re.search(r'fill="#ff7f0e">\d\.\de-\d+</text>', chart)  # learning-rate ticks, as 1.0e-3


def test_wrong_answers_are_shown_with_their_images_embedded_as_png_thumbnails(run, report):
    figures, page = report[0]["figures"]["train"]["stages"]["instruct"], report[1]
    wrong = [r for r in predictions(run, "instruct") if not r["correct"]]
    assert wrong, "a 4-step model gets some held-out answers wrong"
    assert len(figures["wrong"]) == min(12, len(wrong))
    assert {w["question_type"] for w in figures["wrong"]} == {r["question_type"] for r in wrong}  # every type shows
    section = page[page.index(f"<h3>stage instruct: {len(figures['wrong'])} wrong held-out answers of "):]
    section = section[:section.index("</table>")]
    images = render_images(run / "render", None)
    for shown, pngs in zip(figures["wrong"], re.findall(r'src="data:image/png;base64,([^"]+)"', section), strict=True):
        thumbnail = Image.open(io.BytesIO(base64.b64decode(pngs)))
        assert thumbnail.format == "PNG" and max(thumbnail.size) <= THUMBNAIL_PX
        original = load_image(image_reference(shown["image"]), **images)
        original.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        assert thumbnail.convert("RGB").tobytes() == original.tobytes()
        assert shown in [{k: r[k] for k in shown} for r in wrong]


def test_an_image_gone_since_is_named_in_its_row_and_the_rest_of_the_report_is_written(run, tmp_path):
    import shutil

    moved = tmp_path / "run"
    shutil.copytree(run, moved, symlinks=True)
    first = report_of(moved)[0]["figures"]["train"]["stages"]["instruct"]["wrong"][0]
    reference = image_reference(first["image"])
    gone = render_images(moved / "render", None)["roots"][reference["root"]] + "/" + reference["path"]
    (tmp_path / "gone").mkdir()
    shutil.move(gone, tmp_path / "gone")
    assert main(["report", str(moved)]) == 0
    page = (moved / "report.html").read_text()
    assert page.count("image not readable: ") >= 1 and reference["path"] in page
    assert page.count('src="data:image/png;base64,') > 0


def report_of(run):
    return json.loads((run / "report.json").read_text()), (run / "report.html").read_text()


def test_ticks_are_round_numbers_spanning_the_values():
    assert nice_ticks(1.97, 7.2) == [0, 2, 4, 6, 8]
    assert nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(1, 120) == [0, 25, 50, 75, 100, 125]
    assert nice_ticks(0, 2e-4) == [0, 5e-5, 1e-4, 1.5e-4, 2e-4]
    assert nice_ticks(1, 3, whole=True) == [1, 2, 3]  # steps: never half a step


def test_a_loss_that_diverged_is_plotted_up_to_it_and_the_points_left_out_are_counted():
    chart = line_chart([[1, 2.5], [2, 2.0], [3, float("nan")], [4, float("inf")]], right=[[1, 1e-3], [2, 5e-4]])
    loss_line = re.findall(r'<polyline[^>]*points="([^"]+)"', chart)[0]
    assert len(loss_line.split()) == 2 and chart.endswith("<p>(2 points not finite, not drawn)</p>")


def test_wrong_answers_images_are_read_from_the_folder_train_image_roots_repoints(run, tmp_path):
    """A dataset folder moved after render: training reads it from train.image_roots, and so does the report."""
    import shutil

    moved = tmp_path / "run"
    shutil.copytree(run, moved, symlinks=True)
    reference = image_reference(predictions(moved, "instruct")[0]["image"])
    folder = render_images(moved / "render", None)["roots"][reference["root"]]
    shutil.move(folder, tmp_path / "elsewhere")
    config = {**RUN, "train": {**RUN["train"], "image_roots": {reference["root"]: str(tmp_path / "elsewhere")}}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "run.yaml"), "--out", str(moved)]) == 0
    assert json.loads((moved / "train" / "manifest.json").read_text())["image_roots"] == {
        reference["root"]: str(tmp_path / "elsewhere")}
    assert main(["report", str(moved)]) == 0
    page = (moved / "report.html").read_text()
    assert "image not readable" not in page and page.count('src="data:image/png;base64,') > 0
