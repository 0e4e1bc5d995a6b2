"""Saving and loading models: Loom's own format (safetensors + JSON config) and official checkpoints.

Loom's format is what the trainer writes: `model.safetensors` and a `config.json` whose "model" entry
rebuilds the model (`VisionLanguageModel.config_dict`). `from_pretrained` reads a folder in either that
format or one of the official transformers formats `vlm.convert` knows, telling them apart by config.json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FORMATS = ("loom", "hf")


def weights_to_save(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as safetensors can hold it: a tensor shared by two names (an LM head tied to
    the input embeddings) is written once, under its first name."""
    seen: dict[tuple, str] = {}
    weights = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.shape, tensor.dtype, tensor.device) if tensor.numel() else (name,)
        if key in seen:
            continue
        seen[key] = name
        weights[name] = tensor.detach().contiguous().cpu()
    return weights


def load_weights(model: torch.nn.Module, file: Path) -> None:
    """Load a safetensors file written by weights_to_save: only tied parameters may be absent."""
    state = load_file(file)
    missing, unexpected = model.load_state_dict(state, strict=False)
    own = model.state_dict()
    loaded = {own[name].data_ptr() for name in state if name in own}
    missing = [name for name in missing if own[name].data_ptr() not in loaded]  # tied to a loaded one: fine
    if missing or unexpected:
        raise ValueError(f"{file}: weights do not fit the model in its config.json; missing {missing[:8]}, "
                         f"unexpected {unexpected[:8]}")


def save_pretrained(model, path: str | Path, format: str = "loom") -> Path:
    """Write `model` to folder `path` (replaced atomically): Loom's format, or with format="hf" the
    official transformers checkpoint of its architecture."""
    if format not in FORMATS:
        raise ValueError(f"format {format!r}; expected one of {FORMATS}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if format == "hf":
        from .convert import save_hf

        save_hf(model, tmp)
    else:
        tmp.mkdir(parents=True)
        save_file(weights_to_save(model), tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps({"model": model.config_dict()}, indent=2))
    if path.exists():
        shutil.rmtree(path)
    tmp.replace(path)
    return path


def is_loom_checkpoint(config: dict) -> bool:
    return isinstance(config.get("model"), dict) and "preset" in config["model"]


def from_pretrained(path: str | Path, device: str | torch.device = "cpu", attn_implementation: str | None = None):
    """The model in folder `path`: Loom's format or an official checkpoint (llava, blip-2, instructblip,
    qwen2_vl), told apart by its config.json."""
    from .model import VisionLanguageModel

    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: no config.json; give a folder written by save_pretrained or an official "
                                "Hugging Face checkpoint folder")
    config = json.loads(config_file.read_text())
    if is_loom_checkpoint(config):
        model = VisionLanguageModel.from_config_dict(config["model"], attn_implementation=attn_implementation)
        load_weights(model, path / "model.safetensors")
        return model.to(device)
    if "model_type" in config:
        from .convert import load_hf

        return load_hf(path, device=device, attn_implementation=attn_implementation)
    raise ValueError(f"{config_file}: neither Loom's format (a 'model' entry) nor a transformers config (model_type)")
