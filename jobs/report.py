"""`loom report`: one JSON and one HTML page with every stage's counts, figures and the evaluation."""
from __future__ import annotations

import html
import json
from pathlib import Path

from jobs.report_charts import line_chart
from jobs.report_train import accuracy_chart, loss_chart, training_figures, wrong_answers
from pipelines.manifest import read_manifest, write_atomic, write_json_atomic

STAGES = ("ingest", "tower", "render", "pack", "train")


def collect(run_dir: str | Path, timings: dict | None = None) -> dict:
    """Every finished stage's manifest under a run folder, plus the headline figures."""
    run = Path(run_dir)
    report: dict = {"run": str(run), "stages": {}}
    for stage in STAGES:
        manifest = read_manifest(run / stage)
        if manifest is not None:
            report["stages"][stage] = manifest
    if report["stages"].get("ingest", {}).get("figures"):  # histograms the ingest shards added up
        report["figures"] = {"ingest": report["stages"]["ingest"]["figures"]}
    if timings:
        report["wall_time_s_this_invocation"] = timings
    ingest, pack, train = (report["stages"].get(s) for s in ("ingest", "pack", "train"))
    headline = {}
    if ingest:
        headline["language_mix"] = {k: round(v, 4) for k, v in ingest["languages"]["kept_share"].items()}
        headline["pairs_kept"] = ingest["rows_out"]
    if pack:
        headline["packing_fill"] = {name: round(o["fill"], 4) for name, o in pack["outputs"].items()}
    if train and train.get("evaluation"):
        ev = train["evaluation"]
        headline["heldout_vqa_accuracy"] = round(ev["accuracy"], 4)
        headline["majority_baseline"] = round(ev["baselines"]["majority_answer"]["accuracy"], 4)
        headline["per_question_type_majority_baseline"] = round(
            ev["baselines"]["per_question_type_majority"]["accuracy"], 4)
    if train:  # learning rates, accuracy per question type and wrong answers, from the stages' folders
        report.setdefault("figures", {})["train"] = training_figures(run, train)
    report["headline"] = headline
    return report


def write_report(run_dir: str | Path, timings: dict | None = None) -> dict:
    run = Path(run_dir)
    if not run.exists():
        raise FileNotFoundError(f"{run}: no such run folder")
    report = collect(run, timings)
    if not report["stages"]:
        raise FileNotFoundError(f"{run}: no finished stage here (no manifest.json in {', '.join(s + '/' for s in STAGES)}); "
                                "give a run folder, the --out of `loom run` or of a stage")
    write_json_atomic(run / "report.json", report)
    write_atomic(run / "report.html", render_html(report))
    return {"json": str(run / "report.json"), "html": str(run / "report.html")}


def _table(rows: list[tuple], header: tuple) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def bars_svg(counts: dict, width: int = 560, bar: int = 16, colour: str = "#1f77b4") -> str:
    """Horizontal bars, one per label, as inline SVG."""
    if not counts:
        return "<p>(nothing to plot)</p>"
    top = max(counts.values()) or 1
    label_w, height = 150, bar * len(counts) + 8
    rows = []
    for i, (label, value) in enumerate(counts.items()):
        y = 4 + i * bar
        w = (width - label_w - 60) * value / top
        rows.append(f'<text x="{label_w - 6}" y="{y + bar - 5}" font-size="11" text-anchor="end">{html.escape(str(label))}</text>'
                    f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{bar - 4}" fill="{colour}"/>'
                    f'<text x="{label_w + w + 4:.1f}" y="{y + bar - 5}" font-size="11">{value}</text>')
    return f'<svg width="{width}" height="{height}">{"".join(rows)}</svg>'


def render_html(report: dict) -> str:
    parts = ["<html><head><meta charset='utf-8'><title>Loom run report</title><style>"
             "body{font-family:sans-serif;margin:2em;max-width:960px}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}</style></head><body>",
             f"<h1>Loom run: {html.escape(report['run'])}</h1>"]
    head = report["headline"]
    parts.append(_table([(k, json.dumps(v, ensure_ascii=False)) for k, v in head.items()], ("figure", "value")))
    for stage, m in report["stages"].items():
        parts.append(f"<h2>{stage}</h2>")
        counts = [("rows in", m["rows_in"]), ("rows out", m["rows_out"])]
        if m.get("not_selected"):
            counts.append(("not packed: records of splits or datasets no output selects (e.g. held-out)",
                           m["not_selected"]))
        parts.append(_table(counts + [("wall time (s)", m["wall_time_s"]), ("config hash", m["config_hash"])], ("", "")))
        if m["dropped"]:
            parts.append("<h3>dropped, by reason</h3>" + bars_svg(dict(sorted(m["dropped"].items(), key=lambda kv: -kv[1])),
                                                                   colour="#d62728"))
        if stage == "ingest":
            mix = m["languages"]
            parts.append("<h3>language mix</h3>" + _table(
                [(lang, mix["available"].get(lang, 0), mix["kept"].get(lang, 0),
                  f"{mix['kept_share'].get(lang, 0):.4f}", mix["target"][lang]) for lang in mix["target"]],
                ("language", "available", "kept", "kept share", "target")))
            figures = report.get("figures", {}).get("ingest", {})
            if figures:
                parts.append("<h3>kept images: shorter side before resizing (px)</h3>"
                             + bars_svg(figures["original_shorter_side"]))
                for lang, counts in figures["caption_length"].items():
                    unit = "characters" if lang == "zh" else "words"
                    parts.append(f"<h3>caption length, {html.escape(lang)} ({unit})</h3>" + bars_svg(counts))
                if figures["download_throughput"]:
                    curve = [[p["t_end_s"], p["images_per_s"]] for p in figures["download_throughput"]]
                    parts.append("<h3>download throughput (images/s per img2dataset shard, by completion time)</h3>"
                                 + line_chart(curve, x_label="seconds", y_label="images/s"))
        if stage == "tower":
            summary, scores = m["pretrain"], m.get("retrieval")
            parts.append(f"<h3>{html.escape(m['preset'])}'s {m['vision_kind']} tower: {summary['steps']} steps of "
                         f"{summary['batch_size']} pairs, CLIP loss {summary['first_loss']:.3f} → "
                         f"{summary['final_loss']:.3f}</h3>" + line_chart(m["loss_curve"], y_label="CLIP loss"))
            if scores:
                parts.append(_table([("image → caption", scores["image_to_text"]), ("caption → image",
                                     scores["text_to_image"]), ("chance", scores["chance"])],
                                    (f"top-1 retrieval among {scores['pairs']} held-out pairs", "accuracy")))
        if stage == "render":
            parts.append(_table([(n, d["adapter"], d["split"], d["records"], d["languages"])
                                 for n, d in m["datasets"].items()], ("file", "adapter", "split", "records", "languages")))
            if m.get("mixture"):
                parts.append("<h3>training mixture: target (InstructBLIP's sqrt of size, adjusted) against realised</h3>")
                parts.append(_table([(d, x["size"], f"{x['target_share']:.4f}", x["records"], f"{x['realised_share']:.4f}",
                                      x["passes"]) for d, x in m["mixture"].items()],
                                    ("dataset", "records available", "target share", "records drawn",
                                     "realised share", "passes over it")))
        if stage == "pack":
            parts.append(_table([(n, o["samples"], o["sequences"], o["lower_bound_sequences"], f"{o['fill']:.4f}",
                                  f"{o['samples_per_sequence']:.1f}") for n, o in m["outputs"].items()],
                                ("output", "samples", "sequences", "lower bound", "fill", "samples/sequence")))
            weighed = [(n, d, x["records"], x["samples"]) for n, o in m["outputs"].items()
                       for d, x in (o.get("mixture") or {}).items()]
            if any(records != samples for _, _, records, samples in weighed):
                parts.append("<h3>mixture weights: records of each dataset against samples drawn</h3>"
                             + _table(weighed, ("output", "dataset", "records", "samples")))
            for name, output in m["outputs"].items():
                figures = output.get("figures")
                if not figures:
                    continue
                parts.append(f"<h3>{html.escape(name)}: sample length before packing (tokens, visual tokens included)</h3>"
                             + bars_svg(figures["sample_length"]))
                parts.append(f"<h3>{html.escape(name)}: sequences by fill after packing</h3>"
                             + bars_svg(figures["sequence_fill"], colour="#2ca02c"))
                parts.append(_table([(t, v["samples"], v["tokens"], f"{v['token_share']:.4f}")
                                     for t, v in figures["tasks"].items()], ("task", "samples", "tokens", "token share")))
        if stage == "train":
            figures = report["figures"]["train"]
            for s in m["stages"]:
                accuracy = f", held-out VQA accuracy {s['accuracy']:.4f}" if s.get("accuracy") is not None else ""
                accuracy += f", held-out captions CIDEr-D {s['cider']:.3f}" if s.get("cider") is not None else ""
                parts.append(f"<h3>stage {html.escape(s['name'])}: trains {', '.join(s['trainable'])} on "
                             f"{html.escape(s.get('data', '?'))}; "
                             f"{s['steps']} steps, final loss {s['final_loss']:.4f}{accuracy}</h3>")
                parts.append(loss_chart(s, figures))
            ev = m.get("evaluation")
            if ev:
                parts.append("<h3>held-out VQA</h3>")
                rows = [("model (greedy)", f"{ev['accuracy']:.4f}")]
                rows += [(f"baseline: {name}", f"{b['accuracy']:.4f}") for name, b in ev["baselines"].items()]
                parts.append(_table(rows, ("", "accuracy")))
                parts.append(_table([(t, v["n"], f"{v['accuracy']:.4f}") for t, v in ev["by_question_type"].items()],
                                    ("question type", "questions", "accuracy")))
                parts.append(_table([(e["question"], e["prediction"], e["answer"]) for e in ev["examples"]],
                                    ("question", "model", "reference")))
            parts.append(accuracy_chart(figures) + wrong_answers(Path(report["run"]), figures))
    parts.append("</body></html>")
    return "\n".join(parts)
