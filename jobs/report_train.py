"""The report's training figures: each stage's loss and learning rate by step, held-out accuracy per question
type against the blind baselines, and a sample of wrong held-out answers with their images.

Read from the run folder: train/manifest.json, each stage's log.jsonl (the learning rate) and
predictions.parquet (every held-out prediction: image, question, answers, prediction, question_type,
correct), and lm/manifest.json where `loom lm` pretrained the LLM (its blind answers).
"""
from __future__ import annotations

import base64
import collections
import html
import io
import json
from pathlib import Path

from jobs.evaluate import PREDICTIONS, image_reference, render_images
from jobs.report_charts import grouped_bars, line_chart
from pipelines.manifest import read_manifest

THUMBNAIL_PX = 96
ALL = "all questions"
BASELINES = {"majority_answer": "majority answer ({answer!r})",  # the evaluation's blind baselines, as shown
             "per_question_type_majority": "majority answer of its question type"}


def learning_rates(stage_dir: Path) -> list[list[float]]:
    """[step, lr] of every optimizer step in a stage's log.jsonl."""
    path = stage_dir / "log.jsonl"
    if not path.exists():
        return []
    return [[r["step"], r["lr"]] for r in map(json.loads, path.read_text().splitlines()) if "lr" in r]


def read_predictions(stage_dir: Path) -> list[dict] | None:
    """The rows of a stage's predictions.parquet, or None when it has none."""
    path = stage_dir / PREDICTIONS
    if not path.exists():
        return None
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def accuracy_by_type(rows: list[dict]) -> dict[str, float]:
    """The share of correct predictions per question type, and over all questions."""
    by_type = collections.defaultdict(list)
    for row in rows:
        by_type[row["question_type"]].append(bool(row["correct"]))
    accuracy = {t: sum(v) / len(v) for t, v in sorted(by_type.items())}
    return {**accuracy, ALL: sum(bool(r["correct"]) for r in rows) / len(rows)}


def wrong_sample(rows: list[dict], n: int) -> list[dict]:
    """Up to `n` wrong predictions, taken in turn from each question type (in file order within a type), so
    every type that has mistakes shows some."""
    by_type = collections.defaultdict(list)
    for row in rows:
        if not row["correct"]:
            by_type[row["question_type"]].append(row)
    queues, sample = [collections.deque(v) for _, v in sorted(by_type.items())], []
    while len(sample) < n and any(queues):
        for queue in queues:
            if queue and len(sample) < n:
                sample.append(queue.popleft())
    return sample


def training_figures(run: Path, train: dict, shown: int = 12) -> dict:
    """What the report shows of the train stage beyond its manifest: per stage the learning rate by step and,
    from its predictions, accuracy per question type and `shown` wrong answers; the baselines per type; and
    train.image_roots as training used it, where the wrong answers' images are read."""
    stages = {}
    for summary in train.get("stages", []):
        folder = run / "train" / summary["name"]
        rows = read_predictions(folder)
        stages[summary["name"]] = {"learning_rate": learning_rates(folder)}
        if rows:
            stages[summary["name"]].update(questions=len(rows), by_question_type=accuracy_by_type(rows),
                                           wrong=[{k: row[k] for k in ("image", "question", "answers", "prediction",
                                                                       "question_type")}
                                                  for row in wrong_sample(rows, shown)])
    baselines = {}
    for name, baseline in ((train.get("evaluation") or {}).get("baselines") or {}).items():
        label = BASELINES.get(name, name.replace("_", " ")).format(**baseline)
        baselines[label] = {**baseline.get("by_question_type", {}), ALL: baseline["accuracy"]}
    blind = ((read_manifest(run / "lm") or {}).get("held_out") or {})
    if blind.get("blind") is not None:  # `loom lm`'s LLM, before any image: what it answers from the question alone
        baselines["blind LLM (loom lm, held-out training images)"] = {**blind.get("blind_by_question_type", {}),
                                                                       ALL: blind["blind"]}
    return {"stages": stages, "baselines_by_question_type": baselines, "image_roots": train.get("image_roots") or {}}


def accuracy_chart(figures: dict) -> str:
    """Held-out accuracy per question type after each stage, beside each baseline, as one bar chart."""
    series = {f"after {name}": stage["by_question_type"] for name, stage in figures["stages"].items()
              if stage.get("by_question_type")}
    if not series:
        return ""
    series.update(figures["baselines_by_question_type"])
    types = sorted({t for values in series.values() for t in values if t != ALL}) + [ALL]
    groups = {t: {name: values[t] for name, values in series.items() if t in values} for t in types}
    return ("<h3>held-out accuracy per question type, against the blind baselines</h3>"
            + grouped_bars(groups, list(series), x_label="held-out accuracy (exact match)"))


def wrong_answers(run: Path, figures: dict) -> str:
    """Each stage's sample of wrong held-out answers as a table with the image each question asked about."""
    images = None
    parts = []
    for name, stage in figures["stages"].items():
        if not stage.get("wrong"):
            continue
        if images is None:
            images = render_images(run / "render", figures.get("image_roots"))  # train.image_roots over the render's
        rows = "".join(
            f"<tr><td>{thumbnail(w['image'], images)}</td><td>{html.escape(w['question_type'])}</td>"
            f"<td>{html.escape(w['question'])}</td><td>{html.escape(w['prediction'])}</td>"
            f"<td>{html.escape(', '.join(dict.fromkeys(w['answers'])))}</td></tr>" for w in stage["wrong"])
        parts.append(f"<h3>stage {html.escape(name)}: {len(stage['wrong'])} wrong held-out answers of "
                     f"{stage['questions']}</h3><table><tr><th>image</th><th>question type</th><th>question</th>"
                     f"<th>model</th><th>reference answers</th></tr>{rows}</table>")
    return "".join(parts)


def thumbnail(image: str, images: dict) -> str:
    """An <img> of predictions.parquet's image reference, at most THUMBNAIL_PX a side, embedded as a base64 PNG;
    where it cannot be read, the reason."""
    from vlm.images import load_image

    try:
        picture = load_image(image_reference(image), **images)
    except (OSError, ValueError) as err:  # moved or deleted since: say so in the page, keep the rest
        return f"<small>image not readable: {html.escape(str(err))}</small>"
    picture.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    png = io.BytesIO()
    picture.save(png, format="PNG")
    return (f'<img alt="{html.escape(image)}" width="{picture.width}" height="{picture.height}" '
            f'src="data:image/png;base64,{base64.b64encode(png.getvalue()).decode()}">')


def loss_chart(summary: dict, figures: dict) -> str:
    """A stage's loss by step with its learning rate on a second axis."""
    rates = figures["stages"].get(summary["name"], {}).get("learning_rate") or None
    return line_chart(summary["loss_curve"], right=rates)
