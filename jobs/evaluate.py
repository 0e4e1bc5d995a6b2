"""`loom train`'s held-out evaluation: a trained stage answers the render output's held-out questions (and
captions) through vlm.evaluate's one answering loop; scored against blind baselines, every prediction written
to the stage's predictions.parquet and its accuracies to the stage's TensorBoard."""
from __future__ import annotations

import collections
import json
from pathlib import Path

from pipelines.manifest import read_manifest, write_parquet_atomic
from pipelines.render import read_render_output, run_folder
from pipelines.tokenize import Encoder

PREDICTIONS = "predictions.parquet"
# where a stage's held-out accuracies go: the folder vlm.train's TensorBoard writer logs the stage's loss in
TENSORBOARD = "tensorboard"


def render_images(render_dir: Path, image_roots: dict | None) -> dict:
    """Where a render output's image references lead (ImageProcessor's root and roots): run-relative ones
    from the run folder above it, {root, path} ones from its manifest's image_roots, `image_roots` over them."""
    from vlm.data import run_roots

    run = run_folder(render_dir)  # as pack records it
    return {"root": run, "roots": run_roots(run, read_manifest(render_dir) or {}, image_roots)}


def answer_records(model, preset, encoder: Encoder, records: list[dict], batch_size: int, max_new_tokens: int,
                   qformer_dir: Path | None, image_size: int | None = None, images: dict | None = None) -> list[str]:
    """Greedy answers to each record's first user turn (its one image, at `image_size` where a stage trained at
    its own resolution, read from where `images` says: `render_images`), prompted as pack encoded it."""
    from vlm.evaluate import answer_prompts
    from vlm.images import ImageProcessor

    instructions, pad = None, 0
    if preset.qformer_text == "instruction":  # InstructBLIP: the question in the Q-Former's vocabulary too
        from pipelines.qformer_text import QFormerInstructions, qformer_text

        tokenizer = QFormerInstructions(str(qformer_dir), preset.qformer_instruction_length)
        instructions = [tokenizer(qformer_text(r["messages"][:1], "instruction")) for r in records]
        pad = tokenizer.pad
    prompts = [encoder.encode_prompt(r["messages"][:1], task=r["task"], images=r["images"][:1]).tolist()
               for r in records]
    return answer_prompts(model, encoder.tokenizer, prompts, [r["images"][0] for r in records],
                          ImageProcessor(preset, image_size=image_size, **(images or {})), encoder.stop_id,
                          model.pad_token_id, instructions, pad, batch_size, max_new_tokens)


def evaluate_captions(model, preset, encoder: Encoder, render_dir: Path, settings: dict, log=print,
                      qformer_dir: Path | None = None, image_size: int | None = None,
                      image_roots: dict | None = None) -> dict | None:
    """Greedy captions of held-out images, scored by CIDEr-D against every reference caption of the image."""
    from vlm.evaluate import cider_d

    records = read_render_output(render_dir, split=settings["split"], datasets=settings["datasets"],
                                 task="captioning") or []
    by_image: dict[str, list[dict]] = collections.defaultdict(list)  # COCO has several captions per image
    for r in records:
        by_image[r["images"][0]["path"] or r["images"][0]["key"]].append(r)
    items = [group[0] for group in by_image.values()][: settings["limit"]]
    if not items:
        log(f"train: no held-out captions to evaluate (render a split {settings['split']!r} of {settings['datasets']})")
        return None
    predictions = answer_records(model, preset, encoder, items, settings["batch_size"], settings["max_new_tokens"],
                                 qformer_dir, image_size, render_images(render_dir, image_roots))
    references = [[g["messages"][1]["content"] for g in by_image[k]] for k in list(by_image)[:len(items)]]
    result = {"images": len(items), "cider": cider_d(predictions, references),
              "examples": [{"caption": p, "references": refs[:3]} for p, refs in list(zip(predictions, references))[:6]]}
    log(f"evaluate: held-out captions CIDEr-D {result['cider']:.3f} on {len(items)} images")
    return result


def heldout_vqa(render_dir: Path, split: str, datasets: list[str], limit: int | None = None) -> list[dict]:
    """The held-out VQA records (those with reference answers) of `split` in `datasets`, the first `limit`
    of them when given: the questions an evaluation scores."""
    heldout = [r for r in read_render_output(render_dir, split=split, datasets=datasets, task="vqa") or []
               if r["answers"]]
    return heldout if limit is None else heldout[:limit]


def _vqa_records(render_dir: Path, settings: dict) -> tuple[list[dict], list[dict]]:
    """(held-out questions to score, training questions for the baselines: their answers and question types),
    read from the render output with only those rows and columns."""
    train = read_render_output(render_dir, split="train", task="vqa", columns=["messages", "question_type"]) or []
    return heldout_vqa(render_dir, settings["split"], settings["datasets"], settings["limit"]), train


def evaluate_vqa(model, preset, encoder: Encoder, render_dir: Path, settings: dict, log=print,
                 qformer_dir: Path | None = None, image_size: int | None = None,
                 image_roots: dict | None = None, stage_dir: Path | None = None, step: int = 0) -> dict | None:
    """Greedy answers to held-out questions, scored against the majority-answer baselines. `qformer_dir` is
    the Q-Former's tokenizer the pack stage used (InstructBLIP). With `stage_dir` (the trained stage's folder)
    every prediction goes to its predictions.parquet and the accuracies to its TensorBoard at `step`."""
    from vlm.evaluate import accuracy_by_question_type, exact_matches, normalize_answer, vqa_accuracy

    items, train = _vqa_records(render_dir, settings)
    if not items:
        log("train: no held-out VQA records to evaluate (render a split "
            f"{settings['split']!r} of {settings['datasets']}); evaluation skipped")
        return None
    predictions = answer_records(model, preset, encoder, items, settings["batch_size"], settings["max_new_tokens"],
                                 qformer_dir, image_size, render_images(render_dir, image_roots))
    answers = [r["answers"] for r in items]
    scores = vqa_accuracy(predictions, answers)

    # Baselines a blind model could reach from the training answers alone.
    overall = collections.Counter(normalize_answer(r["messages"][1]["content"]) for r in train)
    majority = overall.most_common(1)[0][0]
    by_type: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in train:
        by_type[r["question_type"]][normalize_answer(r["messages"][1]["content"])] += 1
    type_prior = [by_type[r["question_type"]].most_common(1)[0][0] if by_type[r["question_type"]] else majority
                  for r in items]
    types = [r["question_type"] for r in items]

    def scored(guesses: list[str]) -> dict:
        """A baseline's accuracy over all questions and per question type (the report's chart)."""
        return {"accuracy": vqa_accuracy(guesses, answers)["exact_match"],
                "by_question_type": {t: v["accuracy"] for t, v in
                                     accuracy_by_question_type(guesses, answers, types).items()}}

    baselines = {
        "majority_answer": {"answer": majority, **scored([majority] * len(items))},
        "per_question_type_majority": scored(type_prior),
    }
    by_question_type = accuracy_by_question_type(predictions, answers, types)
    result = {
        "questions": len(items), "accuracy": scores["exact_match"], "vqa_accuracy": scores["vqa"],
        "baselines": baselines, "by_question_type": by_question_type,
        "examples": [{"question": question_text(r), "prediction": p, "answer": r["answers"][0]}
                     for r, p in list(zip(items, predictions))[: settings["examples"]]],
    }
    log(f"evaluate: held-out VQA accuracy {result['accuracy']:.3f} on {len(items)} questions; majority answer "
        f"{majority!r} scores {baselines['majority_answer']['accuracy']:.3f}, per-type majority "
        f"{baselines['per_question_type_majority']['accuracy']:.3f}")
    if stage_dir is not None:
        write_predictions(Path(stage_dir) / PREDICTIONS, items, predictions, exact_matches(predictions, answers))
        log_accuracy(Path(stage_dir) / TENSORBOARD, result, step)
    return result


def question_text(record: dict) -> str:
    """The question of a record's first user turn, without the image mark before it."""
    return record["messages"][0]["content"].replace("<image>", "").strip()


# ---------------------------------------------------------------------------------------------
# What a user reads afterwards: predictions.parquet and TensorBoard scalars
# ---------------------------------------------------------------------------------------------

IMAGE_FIELDS = ("shard", "key", "path", "root", "url")


def image_text(reference: dict) -> str:
    """A record's image reference as predictions.parquet's `image` string: a plain path as it is (run-relative
    or absolute), any other reference ({root, path}, {shard, key}) as a JSON object of its set fields."""
    fields = {k: reference[k] for k in IMAGE_FIELDS if reference.get(k) is not None}
    if set(fields) == {"path"}:
        return fields["path"]
    return json.dumps(fields, sort_keys=True)


def image_reference(text: str) -> dict:
    """predictions.parquet's `image` string back to a reference vlm.images.load_image reads (with the run
    folder as its root, and the render's image_roots: `render_images`)."""
    return json.loads(text) if text.startswith("{") else {"path": text}


def write_predictions(path: Path, records: list[dict], predictions: list[str], correct: list[bool]) -> None:
    """Every held-out prediction, one row each: image, question, answers, prediction, question_type, correct."""
    import pyarrow as pa

    table = pa.table({
        "image": pa.array([image_text(r["images"][0]) for r in records], pa.string()),
        "question": pa.array([question_text(r) for r in records], pa.string()),
        "answers": pa.array([list(r["answers"]) for r in records], pa.list_(pa.string())),
        "prediction": pa.array(predictions, pa.string()),
        "question_type": pa.array([r["question_type"] for r in records], pa.string()),
        "correct": pa.array(correct, pa.bool_()),
    })
    write_parquet_atomic(table, path)


def log_accuracy(folder: Path, result: dict, step: int) -> None:
    """heldout/accuracy and heldout/accuracy/<question type> (and the blind baselines) as TensorBoard scalars at
    `step`; nothing where tensorboard is not installed (log.jsonl and the manifest hold the figures)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return
    with SummaryWriter(str(folder)) as writer:
        writer.add_scalar("heldout/accuracy", result["accuracy"], step)
        for question_type, scores in result["by_question_type"].items():
            writer.add_scalar(f"heldout/accuracy/{question_type}", scores["accuracy"], step)
        for name, baseline in result["baselines"].items():
            writer.add_scalar(f"heldout/baseline/{name}", baseline["accuracy"], step)
