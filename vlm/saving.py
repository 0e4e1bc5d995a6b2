"""Writing a model to a folder, in Loom's format (safetensors + JSON config) or as the official transformers
checkpoint of its architecture, and reading weights files back: Loom's into a built model, any checkpoint
folder's as a state dict.

Loom's format is what the trainer writes: `model.safetensors` and a `config.json` whose "model" entry
rebuilds the model (`VisionLanguageModel.config_dict`, read by `vlm.builders.from_config_dict`). Loading a
whole folder as a model, which needs the builders, is `vlm.checkpoint`'s.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .checkpoint_files import written_folder
from .convert import save_hf

FORMATS = ("loom", "hf")


def weights_to_save(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as safetensors can hold it: a parameter the model ties under two names (an LM head
    that is the input embeddings) is written once, under its first name, and a model rebuilt from the
    config ties it again; two parameters that merely share storage are written apart, each its own copy,
    so that a file never lacks a tensor its model holds on its own."""
    every = [name for name, _ in model.named_parameters(remove_duplicate=False)]
    tied = set(every) - {name for name, _ in model.named_parameters()}  # the second names of tied parameters
    weights, written = {}, set()
    for name, tensor in model.state_dict().items():
        if name in tied:
            continue
        tensor = tensor.detach().contiguous().cpu()
        if tensor.numel() and tensor.data_ptr() in written:
            tensor = tensor.clone()  # safetensors refuses shared storage
        written.add(tensor.data_ptr())
        weights[name] = tensor
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
    with written_folder(path, needed=sum(p.numel() * p.element_size() for p in model.state_dict().values())) as tmp:
        if format == "hf":
            save_hf(model, tmp)
        else:
            save_file(weights_to_save(model), tmp / "model.safetensors")
            (tmp / "config.json").write_text(json.dumps({"model": model.config_dict()}, indent=2))
    return path


def save_beside(model, path: str | Path) -> Path:
    """`model.save_pretrained` (a transformers model) into folder `path` beside the files already there (a
    tokenizer): written into a folder of its own first, each file then replaces the one of its name whole."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / ".save.tmp"
    shutil.rmtree(tmp, ignore_errors=True)  # a killed writer's
    model.save_pretrained(tmp)
    for file in sorted(tmp.iterdir()):
        file.replace(path / file.name)
    tmp.rmdir()
    return path


def read_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder: its safetensors files (sharded or not), else pytorch_model*.bin."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors or pytorch_model*.bin; give a checkpoint folder "
                                "written by save_pretrained")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file) if file.suffix == ".safetensors" else torch.load(file, map_location="cpu"))
    return state
