"""A trained run, exported for transformers, answering its held-out questions through
`pipeline("image-text-to-text")`, beside Loom's own evaluation of the same checkpoint.

    python bench/export_pipeline.py RUN OUT [--questions 100]

RUN is a finished `loom run` / `loom train` folder of a preset transformers has a class for (LLaVA-1.5, the
quickstart's preset, here). The script runs `loom export RUN --to hf OUT`, then answers the first N held-out
VQA questions (the run's `train.evaluate` split and datasets) twice, greedy:
- Loom: the last stage's checkpoint through `jobs.evaluate.answer_records`, the loop `loom train` scores with;
- transformers: `pipeline("image-text-to-text", model=OUT)` with the record's image and question as chat
  messages, nothing of Loom imported on that path.
It prints how many answers agree, both accuracies (exact match, as `loom train` scores) and a few examples.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.cli import main as loom  # noqa: E402
from jobs.evaluate import answer_records, heldout_vqa, question_text, render_images  # noqa: E402


def held_out(run: Path, limit: int) -> tuple[list[dict], dict]:
    """The first `limit` held-out VQA records the run's evaluation scores, and where their images are."""
    manifest = json.loads((run / "train" / "manifest.json").read_text())
    settings = manifest.get("evaluate") or {}
    split, datasets = settings.get("split", "val"), settings.get("datasets", ["vqav2"])
    records = heldout_vqa(run / "render", split, datasets, limit)
    if not records:
        sys.exit(f"{run}/render: no held-out VQA records of split {split!r} in {datasets}")
    return records, render_images(run / "render", None)


def loom_answers(run: Path, records: list[dict], images: dict) -> list[str]:
    """Answers of the run's last stage, as its held-out evaluation gives them."""
    from jobs.train import trained_model

    model, encoder = trained_model(run)
    return answer_records(model, model.preset, encoder, records, batch_size=8, max_new_tokens=8, qformer_dir=None,
                          images=images)


def pipeline_answers(out: Path, records: list[dict], images: dict) -> list[str]:
    """Answers of the exported folder through transformers' pipeline, the record's image opened as a user would."""
    from transformers import pipeline

    from vlm.images import load_image

    answer = pipeline("image-text-to-text", model=str(out))
    results = []
    for record in records:
        image = load_image(record["images"][0], images["root"], roots=images["roots"])
        messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                                 {"type": "text", "text": question_text(record)}]}]
        reply = answer(text=messages, max_new_tokens=8, return_full_text=False)
        results.append(reply[0]["generated_text"].strip())
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--questions", type=int, default=100)
    args = parser.parse_args(argv)

    from vlm.evaluate import exact_matches

    start = time.perf_counter()
    if loom(["export", str(args.run), "--to", "hf", str(args.out)]) != 0:
        return 2
    print(f"export: {time.perf_counter() - start:.1f} s; {args.out}: {sorted(p.name for p in args.out.iterdir())}")
    records, images = held_out(args.run, args.questions)
    ours = loom_answers(args.run, records, images)
    theirs = pipeline_answers(args.out, records, images)
    answers = [r["answers"] for r in records]
    agree = sum(a == b for a, b in zip(ours, theirs))
    print(f"{len(records)} held-out questions: {agree} answers identical; accuracy (exact match) "
          f"Loom {sum(exact_matches(ours, answers)) / len(records):.3f}, "
          f"pipeline {sum(exact_matches(theirs, answers)) / len(records):.3f}")
    print("| question | reference | Loom | pipeline |\n|---|---|---|---|")
    for record, a, b in list(zip(records, ours, theirs))[:8]:
        print(f"| {question_text(record)} | {record['answers'][0]} | {a} | {b} |")
    return 0 if agree == len(records) else 1


if __name__ == "__main__":
    sys.exit(main())
