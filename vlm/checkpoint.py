"""Saving and loading models: Loom's own format (safetensors + JSON config) and official checkpoints.

Loom's format is what the trainer writes: `model.safetensors` and a `config.json` whose "model" entry
rebuilds the model (`VisionLanguageModel.config_dict`). `from_pretrained` reads a folder in either that
format or one of the official transformers formats `vlm.convert` knows, telling them apart by config.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .checkpoint_files import DamagedCheckpoint, verify, written_folder
from .qwen_vl_published import is_qwen_vl_published, load_qwen_vl

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
            from .convert import save_hf

            save_hf(model, tmp)
        else:
            save_file(weights_to_save(model), tmp / "model.safetensors")
            (tmp / "config.json").write_text(json.dumps({"model": model.config_dict()}, indent=2))
    return path


def is_loom_checkpoint(config: dict) -> bool:
    return isinstance(config.get("model"), dict) and "preset" in config["model"]


def from_pretrained(path: str | Path, device: str | torch.device = "cpu", attn_implementation: str | None = None):
    """The model in folder `path`: Loom's format or an official checkpoint (llava, blip-2, instructblip,
    qwen2_vl, and Qwen-VL's own layout), told apart by its config.json."""
    from .model import VisionLanguageModel

    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: no config.json; give a folder written by save_pretrained or an official "
                                "Hugging Face checkpoint folder")
    try:
        verify(path, required=("config.json",))
        config = json.loads(config_file.read_text())
        if is_loom_checkpoint(config):
            verify(path, required=("config.json", "model.safetensors"))
    except DamagedCheckpoint as err:
        raise DamagedCheckpoint(f"{err}; write the folder again (save_pretrained) or copy it again") from err
    if is_loom_checkpoint(config):
        model = VisionLanguageModel.from_config_dict(config["model"], attn_implementation=attn_implementation)
        load_weights(model, path / "model.safetensors")
        return model.to(device)
    if is_qwen_vl_published(config):  # Qwen-VL ships its own modeling code, not a transformers class
        return load_qwen_vl(path, read_state_dict(path), device=device, attn_implementation=attn_implementation)
    if "model_type" in config:
        from .convert import load_hf

        return load_hf(path, device=device, attn_implementation=attn_implementation)
    raise ValueError(f"{config_file}: neither Loom's format (a 'model' entry) nor a transformers config (model_type)")


# ---------------------------------------------------------------------------------------------
# Starting a run from pretrained parts: a whole model, or a vision tower and an LLM
# ---------------------------------------------------------------------------------------------

def init_from_pretrained(model, whole: str | Path | None = None, llm: str | Path | None = None,
                         vision: str | Path | None = None, log=print) -> dict[str, str]:
    """Load pretrained weights into a freshly built `model` before its first stage: `whole`, a model folder
    `from_pretrained` reads (Loom's format or an official one); `llm`, a transformers checkpoint folder of the
    preset's language model (a Vicuna, OPT, FlanT5 or Qwen folder); `vision`, a checkpoint folder holding its
    vision tower (a CLIP folder, a whole BLIP-2 or LLaVA checkpoint: the tower is found inside it). The shapes
    must match the preset's; the LLM's vocabulary may differ from the run's tokenizer: shared rows are copied
    and added tokens (such as `<image>`) start at the mean embedding, as LLaVA initialises them. Returns what
    was loaded from where."""
    loaded = {}
    if whole is not None:
        _load_matching(model, from_pretrained(whole).state_dict(), f"model {whole}", resize_vocab=(), log=log)
        loaded["model"] = str(whole)
    if vision is not None:
        _load_matching(model.vision_tower, read_state_dict(vision), f"vision {vision}", resize_vocab=(), log=log)
        loaded["vision"] = str(vision)
    if llm is not None:
        lm = model.language_model
        vocab_keys = {name for name, p in lm.state_dict().items() if p.dim() == 2 and p.shape[0] == lm.config.vocab_size}
        _load_matching(lm, read_state_dict(llm), f"llm {llm}", resize_vocab=vocab_keys, log=log)
        loaded["llm"] = str(llm)
    return loaded


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


def _load_matching(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, resize_vocab, log) -> None:
    """Copy into `module` the tensors of `state` found under one name prefix (a tower inside a whole
    checkpoint): every parameter must be there with its shape, except tied ones and the vocabulary matrices
    named in `resize_vocab`, whose shared rows are copied."""
    own = module.state_dict()
    anchor = next(iter(own))
    prefixes = sorted({key[: -len(anchor)] for key in state if key.endswith(anchor)}, key=len)
    prefix = max(prefixes, key=lambda p: sum(p + k in state for k in own), default="")
    found = {k: state[prefix + k] for k in own if prefix + k in state}
    missing = [k for k in own if k not in found and not _tied_to(own, k, found)]
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in found.items()
             if v.shape != own[k].shape and k not in resize_vocab]
    if missing or wrong:
        raise ValueError(f"{what}: does not fit the preset's architecture; missing {missing[:6]}, "
                         f"shape differs {wrong[:6]}. Pick the preset whose size matches the checkpoint, or a "
                         "checkpoint of the preset's shape")
    with torch.no_grad():
        for name, source in found.items():
            target = own[name]
            source = source.to(target.dtype)
            if source.shape == target.shape:
                target.copy_(source)
                continue
            rows = min(source.shape[0], target.shape[0])
            target[:rows].copy_(source[:rows])
            if target.shape[0] > rows:
                target[rows:].copy_(source.mean(dim=0, keepdim=True).expand(target.shape[0] - rows, -1))
            log(f"init: {what}: {name} has {source.shape[0]} rows, the run's vocabulary {target.shape[0]}; "
                f"{rows} copied" + (f", {target.shape[0] - rows} new at the mean" if target.shape[0] > rows else ""))
    log(f"init: {what}: {len(found)} tensors loaded" + (f" from under {prefix!r}" if prefix else ""))


def _tied_to(own: dict[str, torch.Tensor], name: str, found: dict) -> bool:
    """Whether parameter `name` shares storage with one that is loaded (an LM head tied to the embeddings)."""
    return any(other in found and own[other].data_ptr() == own[name].data_ptr() for other in own if other != name)
