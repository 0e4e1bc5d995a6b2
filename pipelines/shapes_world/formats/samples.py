"""Records of any catalog dataset, drawn from its shapes-world fixture through the dataset's own adapter.

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


def _coco_caption(out: Path, scenes: int) -> list[dict]:
    from catalog.adapters.coco_captions import read_coco_captions

    world = _coco_world(out)
    return read_coco_captions(world["captions"], world["images"], "train")


def _vqav2(out: Path, scenes: int, reader: str = "read_vqav2", module: str = "vqav2") -> list[dict]:
    import importlib

    world = _coco_world(out)
    read = getattr(importlib.import_module(f"catalog.adapters.{module}"), reader)
    return read(world["questions"], world["answers"], world["images"], "train")


def _written(name: str, out: Path, scenes: int, function: str | None = None) -> dict:
    import importlib

    module = importlib.import_module(f"pipelines.shapes_world.formats.{name.split(':')[0]}")
    return getattr(module, function or f"write_{name}")(out / (function or name), seed=0, scenes=scenes)


def _okvqa(out, scenes, reader="read_okvqa", module="okvqa"):
    import importlib

    s = _written("okvqa", out, scenes)["train2014"]
    read = getattr(importlib.import_module(f"catalog.adapters.{module}"), reader)
    return read(s["questions_file"], s["annotations_file"], s["images"], "train")


def _aokvqa(out, scenes, reader="read_aokvqa", module="aokvqa"):
    import importlib

    s = _written("aokvqa", out, scenes)["train"]
    read = getattr(importlib.import_module(f"catalog.adapters.{module}"), reader)
    return read(s["file"], Path(s["images"]).parent, "train")


def _iconqa(out: Path, scenes: int) -> list[dict]:
    from catalog.adapters.iconqa import read_iconqa

    return read_iconqa(_written("iconqa", out, scenes)["data_root"], "train")


def _scienceqa(out: Path, scenes: int) -> list[dict]:
    from catalog.adapters.scienceqa import read_scienceqa

    s = _written("scienceqa", out, scenes)
    return read_scienceqa(s["problems_file"], s["image_root"], "trainval", splits_file=s["splits_file"])


def _simple(writer: str, reader: str, split: str, file_of, root_of, **options) -> Callable[[Path, int], list[dict]]:
    """A fixture whose adapter takes (annotation file, image root, split[, options])."""
    def records(out: Path, scenes: int) -> list[dict]:
        import importlib

        summary = _written(writer, out, scenes)
        read = getattr(importlib.import_module(f"catalog.adapters.{reader.split('.')[0]}"), reader.split(".")[1])
        extra = {k: (v(summary) if callable(v) else v) for k, v in options.items()}
        return read(file_of(summary), root_of(summary), split, **extra)
    return records


def _video(kind: str) -> Callable[[Path, int], list[dict]]:
    def records(out: Path, scenes: int) -> list[dict]:
        from catalog.adapters import video_qa

        s = _written("video_qa", out, scenes, function=f"write_{kind}")
        extra = {"mapping_file": s["mapping"]} if kind == "msvd_qa" else {}
        return getattr(video_qa, f"read_{kind}")(s["files"]["train"], s["video_root"], "train",
                                                 frames_dir=out / f"{kind}_frames", **extra)
    return records


def _llava(part: str, file: str) -> Callable[[Path, int], list[dict]]:
    def records(out: Path, scenes: int) -> list[dict]:
        from catalog.adapters import llava_instruct

        s = _written("llava_instruct", out, scenes)
        return getattr(llava_instruct, f"read_{part}")(Path(s["image_root"]).parent / file, s["image_root"], "train")
    return records


SAMPLES: dict[str, Callable[[Path, int], list[dict]]] = {
    "coco_caption": _coco_caption,
    "web_capfilt": _simple("web_capfilt", "web_capfilt.read_web_capfilt", "train", lambda s: s["file"],
                           lambda s: s["image_root"], strip_prefix=lambda s: s["strip_prefix"]),
    "nocaps": _simple("nocaps", "nocaps.read_nocaps", "val", lambda s: s["files"]["val"],
                      lambda s: s["image_folders"]["val"]),
    "flickr30k": _simple("flickr30k", "flickr30k.read_flickr30k", "train", lambda s: s["file"],
                         lambda s: s["image_folder"]),
    "textcaps": _simple("textcaps", "textcaps.read_textcaps", "train", lambda s: s["files"]["train"],
                        lambda s: Path(s["files"]["train"]).parent / "train_images",
                        ocr_file=lambda s: s["ocr_files"]["train"]),
    "gqa": _simple("gqa", "gqa.read_gqa", "train", lambda s: s["files"]["train"], lambda s: s["images"]),
    "vsr": _simple("vsr", "vsr.read_vsr", "train", lambda s: Path(s["annotation_dir"]) / "train.jsonl",
                   lambda s: s["image_root"]),
    "iconqa": _iconqa,
    "vqav2": _vqav2,
    "vizwiz": _simple("vizwiz", "vizwiz.read_vizwiz", "train", lambda s: s["files"]["train"],
                      lambda s: s["image_folders"]["train"]),
    "okvqa": _okvqa,
    "aokvqa": _aokvqa,
    "scienceqa": _scienceqa,
    "ocrvqa": _simple("ocrvqa", "ocrvqa.read_ocrvqa", "train", lambda s: s["file"], lambda s: s["images"]),
    "textvqa": _simple("textvqa", "textvqa.read_textvqa", "train", lambda s: s["files"]["train"],
                       lambda s: Path(s["files"]["train"]).parent / "train_images",
                       ocr_file=lambda s: s["ocr_files"]["train"]),
    "vqg_vqav2": lambda out, scenes: _vqav2(out, scenes, "read_vqg_vqav2", "question_generation"),
    "vqg_okvqa": lambda out, scenes: _okvqa(out, scenes, "read_vqg_okvqa", "question_generation"),
    "vqg_aokvqa": lambda out, scenes: _aokvqa(out, scenes, "read_vqg_aokvqa", "question_generation"),
    "msvd_qa": _video("msvd_qa"),
    "msrvtt_qa": _video("msrvtt_qa"),
    "ivqa": _video("ivqa"),
    "visdial": _simple("visdial", "visdial.read_visdial", "train", lambda s: s["splits"]["train"]["file"],
                       lambda s: s["image_root"]),
    "hateful_memes": _simple("hateful_memes", "hateful_memes.read_hateful_memes", "train",
                             lambda s: Path(s["root"]) / "train.jsonl", lambda s: s["root"]),
    "llava_conversation": _llava("llava_conversation", "conversation_58k.json"),
    "llava_detail": _llava("llava_detail", "detail_23k.json"),
    "llava_complex_reasoning": _llava("llava_complex_reasoning", "complex_reasoning_77k.json"),
}


def sample_records(card: str, out_dir: str | os.PathLike, scenes: int = 6) -> list[dict]:
    """Canonical records of dataset `card` from a shapes-world fixture written under `out_dir`."""
    if card not in SAMPLES:
        raise KeyError(f"no shapes-world sample for dataset {card!r}; samples exist for {sorted(SAMPLES)}")
    folder = Path(out_dir) / card
    folder.mkdir(parents=True, exist_ok=True)
    return SAMPLES[card](folder, scenes)
