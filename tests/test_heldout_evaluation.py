"""`loom train`'s held-out evaluation (jobs/evaluate.py) on the shapes world: every prediction in its stage's
predictions.parquet, the accuracies in the stage's TensorBoard, and vlm.evaluate's one answering loop behind both
it and the public answer_questions, for the presets whose evaluation reads more than pixels."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import vlm
from jobs.cli import main
from jobs.evaluate import image_reference, render_images
from vlm.evaluate import exact_matches

from test_export import world  # noqa: F401 - the shared fixture: a shapes world rendered by `loom run`

HELD_OUT = 6


@pytest.fixture(scope="module")
def trained(world):  # noqa: F811
    """name -> run folder: the tiny preset packed and trained (one step a stage) by `loom run` on the world's
    render, each evaluated after every stage; each trained once per module."""
    done = {}

    def get(name: str):
        if name not in done:
            preset = vlm.get_preset(name, size="tiny")
            run = world / name
            run.mkdir()
            (run / "render").symlink_to(world / "world" / "render", target_is_directory=True)
            config = {"pack": {"preset": preset.name, "tokenizer": {"train": {"vocab_size": 400}}, "seq_len": 512,
                               "outputs": {s.data: {"datasets": ["vqav2"], "split": "train"} for s in preset.stages}},
                      "train": {"batch_size": 2, "stages": {s.name: {"max_steps": 1} for s in preset.stages},
                                "evaluate": {"datasets": ["vqav2"], "limit": HELD_OUT, "max_new_tokens": 4}}}
            (world / f"{name}.yaml").write_text(yaml.safe_dump(config))
            assert main(["run", str(world / f"{name}.yaml"), "--out", str(run)]) == 0
            done[name] = run
        return done[name]
    return get


def stages_of(run) -> list[dict]:
    return json.loads((run / "train" / "manifest.json").read_text())["stages"]


def test_every_stage_writes_each_held_out_prediction_to_its_predictions_parquet(trained):
    run = trained("instructblip-vicuna")
    for stage in stages_of(run):
        table = pq.read_table(run / "train" / stage["name"] / "predictions.parquet")
        assert table.schema == pa.schema([("image", pa.string()), ("question", pa.string()),
                                          ("answers", pa.list_(pa.string())), ("prediction", pa.string()),
                                          ("question_type", pa.string()), ("correct", pa.bool_())])
        rows = table.to_pylist()
        assert len(rows) == HELD_OUT
        assert {r["question_type"] for r in rows} <= {"colour", "shape", "count", "position", "exists"}
        assert [r["correct"] for r in rows] == exact_matches([r["prediction"] for r in rows], [r["answers"] for r in rows])
        assert sum(r["correct"] for r in rows) / HELD_OUT == stage["accuracy"]
        assert all(r["question"] and "<image>" not in r["question"] and r["answers"] for r in rows)


def test_a_predictions_image_names_the_records_image_and_loads(trained):
    from vlm.images import load_image

    run = trained("instructblip-vicuna")
    rows = pq.read_table(run / "train" / stages_of(run)[-1]["name"] / "predictions.parquet").to_pylist()
    references = [image_reference(r["image"]) for r in rows]
    assert all(set(ref) == {"root", "path"} for ref in references)  # the render's portable {root, path} form
    where = render_images(run / "render", None)
    assert all(load_image(ref, where["root"], roots=where["roots"]).size[0] > 0 for ref in references)


def test_tensorboard_holds_each_stages_held_out_accuracy_overall_and_per_question_type(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = trained("instructblip-vicuna")
    manifest = json.loads((run / "train" / "manifest.json").read_text())
    for stage in manifest["stages"]:
        events = EventAccumulator(str(run / "train" / stage["name"] / "tensorboard"))
        events.Reload()
        scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
        assert scalars["heldout/accuracy"] == [(stage["steps"], pytest.approx(stage["accuracy"]))]
        by_type = {tag.rsplit("/", 1)[1]: values for tag, values in scalars.items()
                   if tag.startswith("heldout/accuracy/")}
        assert sorted(by_type) == sorted(manifest["evaluation"]["by_question_type"])
        assert "train/loss" in scalars  # beside the stage's loss curve
    last = manifest["stages"][-1]
    events = EventAccumulator(str(run / "train" / last["name"] / "tensorboard"))
    events.Reload()
    for question_type, scores in manifest["evaluation"]["by_question_type"].items():
        assert [e.value for e in events.Scalars(f"heldout/accuracy/{question_type}")] == [
            pytest.approx(scores["accuracy"])]


@pytest.mark.parametrize("name", ["instructblip-vicuna", "qwen2-vl"])
def test_answer_questions_answers_as_loom_trains_evaluation_did(name, trained):
    """The public function runs the presets it once could not: InstructBLIP's Q-Former reads each question in
    its own vocabulary, Qwen2-VL sees each image at its native resolution."""
    from transformers import AutoTokenizer

    from jobs.evaluate import question_text
    from pipelines.render import read_render_output
    from pipelines.tokenize import Encoder, load_tokenizer
    from templates.chat import get_chat_format
    from vlm.evaluate import answer_questions
    from vlm.train import load_model

    run = trained(name)
    stage = stages_of(run)[-1]
    model = load_model(run / "train" / stage["name"])
    preset = model.preset
    records = [r for r in read_render_output(run / "render", split="val", datasets=["vqav2"], task="vqa")
               if r["answers"]][:HELD_OUT]
    chat = get_chat_format(preset.chat_format)
    items = [{"image": r["images"][0], "question": question_text(r),
              "prompt": "".join(text for text, _ in chat.pieces(r["messages"][:1], task=r["task"]))} for r in records]
    folder = run / "pack" / preset.stages[-1].data / "tokenizer"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    qformer = AutoTokenizer.from_pretrained(run / "pack" / "qformer_tokenizer") if preset.qformer_text else None
    stop = Encoder(load_tokenizer(folder), chat, preset.visual_tokens).stop_id  # where the chat format ends a turn
    where = render_images(run / "render", None)
    answers = answer_questions(model, tokenizer, items, max_new_tokens=4, qformer_tokenizer=qformer, stop_id=stop,
                               image_root=where["root"], image_roots=where["roots"])
    predicted = pq.read_table(run / "train" / stage["name"] / "predictions.parquet").column("prediction").to_pylist()
    assert answers == predicted
