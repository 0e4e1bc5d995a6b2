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

from .preset import GROUPS, PRESETS, LoRA, Preset, Stage, get_preset, presets, stages

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
