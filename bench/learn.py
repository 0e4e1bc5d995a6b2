"""Learnability: every preset, tiny, trained through all its stages on the shapes world, then scored on
held-out scenes against the majority-answer baselines.

    python bench/learn.py [--out runs/learn] [--presets llava-1.5,blip2-opt] [--train-scenes 800]
                          [--val-scenes 150] [--epochs 4] [--seq-len N] [--image-size 64]
                          [--json runs/learn/table.json]

One shapes world (COCO Captions- and VQAv2-format splits, true by construction) is rendered once; each
preset then packs it in its own chat format and visual-token count and runs `loom train` (vlm.train's
staged trainer, held-out VQA after every stage). Stage data, per stage:
- a pretraining stage on pairs reads the COCO-format captions (`pretrain`);
- every later stage reads captions + VQAv2-format questions (`multitask`, `instruct`).
BLIP-2's second stage reads the captions + questions too (BLIP-2's VQA fine-tuning keeps the LLM frozen
as here): the paper's zero-shot VQA leans on a pretrained LLM's knowledge, which a tiny one lacks.

Presets that never train their LLM's own weights (BLIP-2, InstructBLIP, MiniGPT-4; MiniGPT-v2, whose LLM
learns through LoRA adapters) freeze a pretrained one in the papers. A tiny LLM has no pretraining, so the
bench gives it one first with `loom lm` (jobs/lm.py): the LLM alone learns the run's own text with each
image's captions written where the image will be, before its question and answer (and each caption alone),
so it answers from a scene described in its prompt; its visual-token slot then has something the connector
can steer. It is saved as a transformers checkpoint folder (run/lm) that the run starts from
(`train.init.llm`), as a user's run starts from Vicuna or OPT. `loom lm` scores it on held-out training
images' questions, with their description and blind; the model scored before the first stage (that LLM
behind an untrained vision path) is the blind figure the stages must beat.
These presets pack 512-token rows (`--seq-len`): their LLM is frozen and their connector learns from far fewer visual tokens per sample (8 here), so 2048-token rows of ~70
samples would give it few optimizer steps; the same epochs in 512-token rows give four times as many.

Resolution: a shapes-world scene holds several shapes; at the 32 px of most tiny presets each is a few
pixels and the model cannot tell which colour belongs to which shape. Presets whose visual token count
does not depend on the image (Q-Former, Qwen-VL's resampler) train every stage and are scored at 64 px
(`--image-size`), the resolution of tiny LLaVA-1.5, through the per-stage resolution a config may set;
LLaVA and MiniGPT-v2 (a token per patch or patch group) keep 32 px, Qwen2-VL its native resolution.

The table: per stage the mean loss of its first and last tenth of steps and the held-out accuracy after it;
then the final accuracy and its share per question type (colour and shape no prior answers: a blind model
scores about 1/6 on them), the majority-answer and per-question-type-majority baselines, the frozen-LLM
presets' accuracy before their first stage (the pretrained LLM answering blind), what `loom lm` measured
of that LLM (held-out questions answered from their scene's description / blind), whether the loss fell
in every stage, and the seconds.

Everything runs in this one process, Ray never started (render and pack with `ray: never`), so the bench
runs where only torch and transformers are installed (bench/gpu.sh).
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

import vlm  # noqa: E402
from jobs.pack import run_pack  # noqa: E402
from jobs.render import run_render  # noqa: E402
from jobs.run import run_demo_data  # noqa: E402
from jobs.train import run_train, starting_model, train_settings  # noqa: E402
from pipelines.shapes_world.scenes import QUESTION_TYPES  # noqa: E402

CAPTIONS = ["coco_caption"]
MIXED = ["coco_caption", "vqav2"]


def render_world(out: Path, train_scenes: int, val_scenes: int) -> None:
    config = {"demo_data": {"seed": 0, "pair_scenes": 20, "train_scenes": train_scenes, "val_scenes": val_scenes}}
    run_demo_data(config, str(out), log=lambda *_: None)
    demo = out / "demo"
    render = {"render": {"seed": 0, "datasets": [
        {"adapter": "coco_captions", "annotations": f"{demo}/coco/annotations/captions_train2014.json",
         "images": f"{demo}/coco/train2014", "split": "train"},
        {"adapter": "vqav2", "questions": f"{demo}/vqav2/v2_OpenEnded_mscoco_train2014_questions.json",
         "annotations": f"{demo}/vqav2/v2_mscoco_train2014_annotations.json", "images": f"{demo}/coco/train2014",
         "split": "train"},
        {"adapter": "vqav2", "questions": f"{demo}/vqav2/v2_OpenEnded_mscoco_val2014_questions.json",
         "annotations": f"{demo}/vqav2/v2_mscoco_val2014_annotations.json", "images": f"{demo}/coco/val2014",
         "split": "val", "template": "vqa_en_04"},
    ], "ray": "never"}}  # one machine: no Ray needed (a GPU box may not have it)
    run_render(render, out, log=lambda *_: None)


def frozen_llm(preset) -> bool:
    """Whether the LLM's own weights stay frozen in every stage (MiniGPT-v2's train only LoRA adapters)."""
    return all("llm" not in stage.trainable or (stage.lora and stage.lora.group == "llm") for stage in preset.stages)


def run_config(preset, args, run: Path) -> dict:
    outputs = {}
    for stage in preset.stages:
        outputs[stage.data] = {"datasets": CAPTIONS if stage.data == "pretrain" else MIXED, "split": "train"}
    stages = {}
    for k, stage in enumerate(preset.stages):
        # the first stage on pairs once; the others --epochs times (BLIP-2's stage 1 learns its own losses)
        stages[stage.name] = {"epochs": 1 if stage.data == "pretrain" and k == 0 else args.epochs}
    if preset.visual_token_count_fixed and preset.image_size < args.image_size:  # see above
        for name in stages:
            stages[name]["image_size"] = args.image_size
    if preset.architecture.startswith("blip2"):  # its second stage on captions + questions (see above)
        stages["generative"]["data"] = "mixed"
        outputs["mixed"] = {"datasets": MIXED, "split": "train"}
    if "instruct" not in outputs:
        outputs["instruct"] = {"datasets": MIXED, "split": "train"}  # the blind figure's model is built for it
    config = {
        "pack": {"preset": preset.name, "seq_len": args.seq_len or (512 if frozen_llm(preset) else 2048), "tokenizer": {"train": {"vocab_size": 2000}},
                 "outputs": outputs, "ray": "never"},
        "train": {"seed": 0, "batch_size": args.batch_size, "stages": stages,
                  "evaluate": {"datasets": ["vqav2"], "split": "val", "limit": args.eval_limit}},
    }
    if frozen_llm(preset):
        config["train"]["init"] = {"llm": str(run / "lm")}
    return config


def pretrain_llm(preset, config: dict, run: Path, args) -> dict:
    """The tiny LLM's pretraining: `loom lm` on the run's render and pack outputs (each image's captions in the
    prompt where its image will be, then the question and answer; and each caption alone), written as a
    transformers checkpoint folder, run/lm, that train.init.llm reads."""
    from jobs.lm import run_lm

    lm = {"epochs": args.llm_epochs, "seq_len": config["pack"]["seq_len"], "batch_size": args.llm_batch_size,
          "lr": args.llm_lr, "shapes_world_scenes": args.llm_scenes,
          "held_out": min(32, args.train_scenes // 10)}
    manifest = run_lm({"lm": lm}, run, log=print)
    log = [loss for _, loss in manifest["loss_curve"]]
    held_out = manifest["held_out"] or {}
    return {"steps": len(log), **ends(log), "from_description": held_out.get("from_description"),
            "blind_lm": held_out.get("blind"), "accuracy_before_stages": blind_accuracy(preset, config, run)}


def blind_accuracy(preset, config: dict, run: Path) -> float:
    """Held-out accuracy of the model the first stage starts from: the pretrained LLM behind an untrained
    vision path, which answers from the question alone."""
    from jobs.evaluate import evaluate_vqa

    settings = train_settings(config, preset)
    model, encoder = starting_model(preset, settings, run / "pack" / "instruct", log=lambda *_: None)
    result = evaluate_vqa(model, preset, encoder, run / "render", settings["evaluate"], log=lambda *_: None,
                          qformer_dir=run / "pack" / "qformer_tokenizer")
    return result["accuracy"]


def ends(losses: list[float]) -> dict:
    """The mean loss of a stage's first and last tenth of steps (one step's loss is noisy)."""
    n = max(1, len(losses) // 10)
    return {"first_loss": sum(losses[:n]) / n, "last_loss": sum(losses[-n:]) / n}


def learn(name: str, args, out: Path) -> dict:
    preset = vlm.get_preset(name, size="tiny")
    run = out / name
    run.mkdir(parents=True, exist_ok=True)
    if not (run / "render").exists():
        (run / "render").symlink_to((out / "render").resolve(), target_is_directory=True)
    config = run_config(preset, args, run)
    started = time.time()
    run_pack(config, run, log=lambda *_: None)
    row = {"preset": name}
    if frozen_llm(preset):
        row["llm_pretraining"] = pretrain_llm(preset, config, run, args)
    manifest = run_train(config, run, log=print)
    evaluation = manifest["evaluation"]
    row["stages"] = [{"name": s["name"], "data": s["data"], "trainable": s["trainable"], "steps": s["steps"],
                      **ends([loss for _, loss in s["loss_curve"]]), "accuracy": s["accuracy"]}
                     for s in manifest["stages"]]
    row["accuracy"] = evaluation["accuracy"]
    row["questions"] = evaluation["questions"]
    row["majority"] = evaluation["baselines"]["majority_answer"]["accuracy"]
    row["type_majority"] = evaluation["baselines"]["per_question_type_majority"]["accuracy"]
    row["by_question_type"] = {t: v["accuracy"] for t, v in evaluation["by_question_type"].items()}
    row["loss_fell"] = all(s["last_loss"] < s["first_loss"] for s in row["stages"])
    row["beats_majority"] = row["accuracy"] > row["majority"]
    row["seconds"] = round(time.time() - started, 1)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| preset | stages: loss first → last (held-out accuracy after) | accuracy | "
             + " | ".join(QUESTION_TYPES) + " | majority | per-type majority | blind LLM (before stages) "
             "| LLM from description / blind | loss fell | s |",
             "|---" * (9 + len(QUESTION_TYPES)) + "|"]
    for r in rows:
        lm = r.get("llm_pretraining")
        before = f"{lm['accuracy_before_stages']:.3f}" if lm else "-"
        reads = f"{lm['from_description']:.3f} / {lm['blind_lm']:.3f}" if lm and lm["from_description"] is not None else "-"
        kinds = " | ".join(f"{r['by_question_type'].get(t, float('nan')):.2f}" for t in QUESTION_TYPES)
        stages = "; ".join(f"{s['name']} {s['first_loss']:.2f} → {s['last_loss']:.2f} ({s['accuracy']:.3f})"
                           for s in r["stages"])
        lines.append(f"| {r['preset']} | {stages} | {r['accuracy']:.3f} | {kinds} | {r['majority']:.3f} | "
                     f"{r['type_majority']:.3f} | {before} | {reads} | {'yes' if r['loss_fell'] else 'no'} | "
                     f"{r['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/learn")
    parser.add_argument("--presets", default=",".join(vlm.presets()), help="comma-separated preset names")
    parser.add_argument("--train-scenes", type=int, default=800)
    parser.add_argument("--val-scenes", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=4, help="epochs of every stage after a pretraining one")
    parser.add_argument("--llm-epochs", type=int, default=8, help="the frozen-LLM presets' LLM pretraining (loom lm)")
    parser.add_argument("--llm-batch-size", type=int, default=4, help="packed text sequences per LLM pretraining step")
    parser.add_argument("--llm-lr", type=float, default=2e-3, help="the LLM pretraining's peak learning rate")
    parser.add_argument("--llm-scenes", type=int, default=4000,
                        help="text-only shapes-world scenes the LLM also reads (lm.shapes_world_scenes)")
    parser.add_argument("--seq-len", type=int, default=None,
                        help="packed sequence length (default: 512 for the frozen-LLM presets, else 2048)")
    parser.add_argument("--image-size", type=int, default=64,
                        help="the resolution presets with a fixed visual token count train and are scored at")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--eval-limit", type=int, default=None, help="held-out questions scored (default: all)")
    parser.add_argument("--json", default=None, help="write the rows here (default: OUT/table.json)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    render_world(out, args.train_scenes, args.val_scenes)
    rows = []
    for name in args.presets.split(","):
        rows.append(learn(name, args, out))
        print(table(rows[-1:]), flush=True)
        Path(args.json or out / "table.json").write_text(json.dumps(rows, indent=2))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
