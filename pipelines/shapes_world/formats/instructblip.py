"""All 26 InstructBLIP datasets as shapes-world fixtures in their native formats, and the `loom render`
config that turns them into InstructBLIP's instruction-tuning corpus: the 13 held-in datasets' training
splits drawn into the square-root mixture, and the 13 held-out datasets' evaluation splits rendered
once each, with the evaluation prompts where a dataset needs one (VSR's statements, the multiple-choice
sets' options).
"""
from __future__ import annotations

import os
from pathlib import Path

from pipelines.shapes_world.formats.samples import _written, sample_entry

# held-out dataset -> (the split InstructBLIP evaluates on, or the closest one with answers; the
# evaluation template pinned, or None to draw) -- the splits as LAVIS's instructblip configs name them
EVALUATION = {
    "nocaps": ("val", None),
    "flickr30k": ("test", None),
    "gqa": ("testdev", None),
    "vsr": ("test", "vr_eval_statement"),
    "iconqa": ("test", "vr_eval_multiple_choice"),
    "textvqa": ("val", "rvqa_eval_short_answer"),
    "visdial": ("val", "vd_eval_short_answer"),
    "hateful_memes": ("dev_seen", "cls_eval_hateful"),
    "vizwiz": ("val", None),  # its test split has no public answers
    "scienceqa": ("test", "kvqa_eval_multiple_choice"),
    "msvd_qa": ("test", None),
    "msrvtt_qa": ("test", None),
    "ivqa": ("test", None),
}


def _evaluation_arguments(card: str, folder: Path, scenes: int, split: str) -> dict:
    """The adapter's arguments for a held-out dataset's evaluation split."""
    if card in ("msvd_qa", "msrvtt_qa", "ivqa"):
        s = _written("video_qa", folder, scenes, function=f"write_{card}")
        extra = {"mapping_file": s["mapping"]} if card == "msvd_qa" else {}
        return {"annotation_file": s["files"][split], "video_root": s["video_root"],
                "frames_dir": folder / f"{card}_frames", **extra}
    s = _written(card, folder, scenes)
    if card == "nocaps":
        return {"annotation_file": s["files"][split], "image_root": s["image_folders"][split]}
    if card == "flickr30k":
        return {"annotation_file": s["file"], "image_root": s["image_folder"]}
    if card == "gqa":
        return {"questions_file": s["files"][split], "image_root": s["images"]}
    if card == "vsr":
        return {"annotation_file": Path(s["annotation_dir"]) / f"{split}.jsonl", "image_root": s["image_root"]}
    if card == "iconqa":
        return {"data_root": s["data_root"]}
    if card == "textvqa":
        return {"annotation_file": s["files"][split], "image_root": s["images"][split], "ocr_file": s["ocr_files"][split]}
    if card == "visdial":
        return {"annotation_file": s["splits"][split]["file"], "image_root": s["image_root"]}
    if card == "hateful_memes":
        return {"annotation_file": Path(s["root"]) / f"{split}.jsonl", "image_root": s["root"]}
    if card == "vizwiz":
        return {"annotation_file": s["files"][split], "image_root": s["image_folders"][split]}
    if card == "scienceqa":
        return {"problems_file": s["problems_file"], "image_root": s["image_root"], "splits_file": s["splits_file"]}
    raise KeyError(f"no evaluation split known for held-out dataset {card!r}")


def write_instructblip(out: str | os.PathLike, scenes: int = 6, total: int | None = None, seed: int = 0) -> dict:
    """Write every dataset's fixture under `out` and `out/render.yaml`; the config and where it is.

    `total`: the training mixture's size in records (default: the held-in datasets' sizes added up)."""
    import yaml

    from catalog.cards import load_cards, select_cards

    out = Path(out)
    cards = load_cards()
    training, evaluation = [], []
    for card in sorted(select_cards(cards, kind="dataset")):
        if cards[card]["held"] == "held-in":
            training.append(sample_entry(card, out, scenes))
            continue
        split, template = EVALUATION[card]
        folder = out / card
        folder.mkdir(parents=True, exist_ok=True)
        arguments = _evaluation_arguments(card, folder, scenes, split)
        entry = {"card": card, "split": split, **{k: str(v) if isinstance(v, Path) else v for k, v in arguments.items()}}
        evaluation.append(entry | ({"template": template} if template else {}))
    mixture = {"weighting": "sqrt"} | ({"total": total} if total else {})
    config = {"render": {"seed": seed, "mixture": mixture, "datasets": training + evaluation}}
    path = out / "render.yaml"
    path.write_text("# InstructBLIP's 26 datasets as shapes-world fixtures: the held-in training splits in the\n"
                    "# square-root mixture, the held-out evaluation splits once each. Written by\n"
                    "# `loom demo-data OUT --instructblip`.\n" + yaml.safe_dump(config, sort_keys=False))
    return {"config": str(path), "training": [e["card"] for e in training], "evaluation": [e["card"] for e in evaluation]}
