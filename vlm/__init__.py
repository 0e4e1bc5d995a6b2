"""Loom's models: architecture presets, the VLM, its staged trainer and VQA evaluation.

    import vlm
    vlm.presets()                                  # the ten architectures
    model = vlm.build("llava-1.5", size="tiny")    # or size="published"
    model = vlm.from_pretrained(path)              # Loom's format or an official HF checkpoint, detected
    model.save_pretrained(path, format="loom")     # or format="hf" where transformers has the class

Presets import instantly; the model, data, training and evaluation names load
torch and transformers on first use, so `vlm.stages(name)` stays cheap for a
config checker.
"""

import os

# torch's OpenMP threads sleep at a barrier rather than spin: on a machine other processes keep busy, a spinning
# thread waits for one that is not running, and a step takes 10 or more times longer (vlm/threads.py). OpenMP reads
# this once, when torch loads; a value the environment gives is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .preset import GROUPS, PRESETS, LoRA, Preset, Stage, get_preset, presets, stages  # noqa: E402

_LAZY = {
    "VisionLanguageModel": "model",
    "build_model": "builders",
    "build": "builders",
    "from_pretrained": "checkpoint",
    "count_parameters": "model",
    "PackedDataset": "data",
    "DataPosition": "data",
    "ImageProcessor": "images",
    "TrainConfig": "train",
    "train_stage": "train",
    "load_model": "train",
    "answer_questions": "evaluate",
    "vqa_accuracy": "evaluate",
}

__all__ = ["GROUPS", "PRESETS", "LoRA", "Preset", "Stage", "get_preset", "presets", "stages", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'vlm' has no attribute {name!r}")
