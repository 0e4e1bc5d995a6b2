"""Records of any catalog dataset, drawn from its shapes-world fixture through the dataset's own adapter,
and the `loom render` entry that reads them.

`loom templates lint` renders every template on these, and `loom templates preview` shows them, so a
template author needs no downloaded dataset. Each entry writes the fixture under a folder and reads the
split that has answers (the training split where there is one) with the adapter its card names.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from pipelines.shapes_world.export import write_demo_data


def _coco_world(out: Path) -> dict:
    world = out / "coco_world"
    if not (world / "world.json").exists():
        write_demo_data(str(world), seed=0, pair_scenes=0, train_scenes=8, val_scenes=0)
    return {"captions": world / "coco/annotations/captions_train2014.json", "images": world / "coco/train2014",
            "questions": world / "vqav2/v2_OpenEnded_mscoco_train2014_questions.json",
            "answers": world / "vqav2/v2_mscoco_train2014_annotations.json"}


def _coco_caption(out: Path, scenes: int) -> dict:
    world = _coco_world(out)
    return {"annotation_file": world["captions"], "image_root": world["images"]}


def _vqav2(out: Path, scenes: int) -> dict:
    world = _coco_world(out)
    return {"questions_file": world["questions"], "annotations_file": world["answers"], "image_root": world["images"]}


def _written(name: str, out: Path, scenes: int, function: str | None = None) -> dict:
    import importlib

    module = importlib.import_module(f"pipelines.shapes_world.formats.{name}")
    return getattr(module, function or f"write_{name}")(out / (function or name), seed=0, scenes=scenes)


def _okvqa(out: Path, scenes: int) -> dict:
    s = _written("okvqa", out, scenes)["train2014"]
    return {"questions_file": s["questions_file"], "annotations_file": s["annotations_file"], "image_root": s["images"]}


def _aokvqa(out: Path, scenes: int) -> dict:
    s = _written("aokvqa", out, scenes)["train"]
    return {"annotation_file": s["file"], "image_root": Path(s["images"]).parent}


def _iconqa(out: Path, scenes: int) -> dict:
    return {"data_root": _written("iconqa", out, scenes)["data_root"]}


def _scienceqa(out: Path, scenes: int) -> dict:
    s = _written("scienceqa", out, scenes)
    return {"problems_file": s["problems_file"], "image_root": s["image_root"], "splits_file": s["splits_file"],
            "split": "trainval"}


def _simple(writer: str, file_of, root_of, **options) -> Callable[[Path, int], dict]:
    """A fixture whose adapter takes (annotation_file, image_root, split[, options])."""
    def entry(out: Path, scenes: int) -> dict:
        summary = _written(writer, out, scenes)
        return {"annotation_file": file_of(summary), "image_root": root_of(summary),
                **{k: (v(summary) if callable(v) else v) for k, v in options.items()}}
    return entry


def _video(kind: str) -> Callable[[Path, int], dict]:
    def entry(out: Path, scenes: int) -> dict:
        s = _written("video_qa", out, scenes, function=f"write_{kind}")
        extra = {"mapping_file": s["mapping"]} if kind == "msvd_qa" else {}
        return {"annotation_file": s["files"]["train"], "video_root": s["video_root"],
                "frames_dir": out / f"{kind}_frames", **extra}
    return entry


def _llava(file: str) -> Callable[[Path, int], dict]:
    def entry(out: Path, scenes: int) -> dict:
        s = _written("llava_instruct", out, scenes)
        return {"annotation_file": Path(s["image_root"]).parent / file, "image_root": s["image_root"]}
    return entry


# dataset card -> (fixture folder, scenes) -> its adapter's arguments, `split` among them where not train
SAMPLES: dict[str, Callable[[Path, int], dict]] = {
    "coco_caption": _coco_caption,
    "web_capfilt": _simple("web_capfilt", lambda s: s["file"], lambda s: s["image_root"],
                           strip_prefix=lambda s: s["strip_prefix"]),
    "nocaps": _simple("nocaps", lambda s: s["files"]["val"], lambda s: s["image_folders"]["val"], split="val"),
    "flickr30k": _simple("flickr30k", lambda s: s["file"], lambda s: s["image_folder"]),
    "textcaps": _simple("textcaps", lambda s: s["files"]["train"], lambda s: Path(s["files"]["train"]).parent / "train_images",
                        ocr_file=lambda s: s["ocr_files"]["train"]),
    "gqa": lambda out, scenes: (lambda s: {"questions_file": s["files"]["train"], "image_root": s["images"]})(
        _written("gqa", out, scenes)),
    "vsr": _simple("vsr", lambda s: Path(s["annotation_dir"]) / "train.jsonl", lambda s: s["image_root"]),
    "iconqa": _iconqa,
    "vqav2": _vqav2,
    "vizwiz": _simple("vizwiz", lambda s: s["files"]["train"], lambda s: s["image_folders"]["train"]),
    "okvqa": _okvqa,
    "aokvqa": _aokvqa,
    "scienceqa": _scienceqa,
    "ocrvqa": _simple("ocrvqa", lambda s: s["file"], lambda s: s["images"]),
    "textvqa": _simple("textvqa", lambda s: s["files"]["train"], lambda s: Path(s["files"]["train"]).parent / "train_images",
                       ocr_file=lambda s: s["ocr_files"]["train"]),
    "vqg_vqav2": _vqav2,
    "vqg_okvqa": _okvqa,
    "vqg_aokvqa": _aokvqa,
    "msvd_qa": _video("msvd_qa"),
    "msrvtt_qa": _video("msrvtt_qa"),
    "ivqa": _video("ivqa"),
    "visdial": _simple("visdial", lambda s: s["splits"]["train"]["file"], lambda s: s["image_root"]),
    "hateful_memes": _simple("hateful_memes", lambda s: Path(s["root"]) / "train.jsonl", lambda s: s["root"]),
    "llava_conversation": _llava("conversation_58k.json"),
    "llava_detail": _llava("detail_23k.json"),
    "llava_complex_reasoning": _llava("complex_reasoning_77k.json"),
}


def sample_entry(card: str, out_dir: str | os.PathLike, scenes: int = 6) -> dict:
    """A `loom render` entry ({card, split, ...its adapter's arguments}) for dataset `card`'s shapes-world
    fixture, written under `out_dir`: the split that has answers (the training split where there is one)."""
    if card not in SAMPLES:
        raise KeyError(f"no shapes-world sample for dataset {card!r}; samples exist for {sorted(SAMPLES)}")
    folder = Path(out_dir) / card
    folder.mkdir(parents=True, exist_ok=True)
    arguments = SAMPLES[card](folder, scenes)
    return {"card": card, "split": arguments.pop("split", "train"),
            **{k: str(v) if isinstance(v, Path) else v for k, v in arguments.items()}}


def sample_records(card: str, out_dir: str | os.PathLike, scenes: int = 6) -> list[dict]:
    """Canonical records of dataset `card` from a shapes-world fixture written under `out_dir`, read by the
    adapter its card names."""
    import importlib

    from catalog.cards import get_card

    entry = sample_entry(card, out_dir, scenes)
    module, _, function = get_card(card)["adapter"].rpartition(".")
    reader = getattr(importlib.import_module(module), function)
    return reader(**{k: v for k, v in entry.items() if k != "card"})
