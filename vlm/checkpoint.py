"""Loading models: a folder in Loom's own format (safetensors + JSON config) or an official checkpoint, and
starting a run from pretrained parts.

Loom's format is what the trainer and `save_pretrained` (vlm.saving) write: `model.safetensors` and a
`config.json` whose "model" entry rebuilds the model. `from_pretrained` reads a folder in either that format
or one of the official transformers formats `vlm.convert` knows, telling them apart by config.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .builders import from_config_dict, model_class
from .checkpoint_files import DamagedCheckpoint, verify
from .convert import assign_weights, read_hf
from .qwen_vl_published import is_qwen_vl_published, load_qwen_vl
# the writing half, named here too: `from vlm.checkpoint import save_pretrained` is where callers find it
from .saving import FORMATS, load_weights, read_state_dict, save_pretrained, weights_to_save  # noqa: F401


def is_loom_checkpoint(config: dict) -> bool:
    return isinstance(config.get("model"), dict) and "preset" in config["model"]


def from_pretrained(path: str | Path, device: str | torch.device = "cpu", attn_implementation: str | None = None):
    """The model in folder `path`: Loom's format or an official checkpoint (llava, blip-2, instructblip,
    qwen2_vl, and Qwen-VL's own layout), told apart by its config.json."""
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
        model = from_config_dict(config["model"], attn_implementation=attn_implementation)
        load_weights(model, path / "model.safetensors")
        return model.to(device)
    if is_qwen_vl_published(config):  # Qwen-VL ships its own modeling code, not a transformers class
        return load_qwen_vl(path, config, read_state_dict(path), device=device, attn_implementation=attn_implementation)
    if "model_type" in config:
        return load_hf(path, device=device, attn_implementation=attn_implementation)
    raise ValueError(f"{config_file}: neither Loom's format (a 'model' entry) nor a transformers config (model_type)")


def load_hf(path, device: str | torch.device = "cpu", attn_implementation: str | None = None):
    """A Loom model holding the weights of the official checkpoint in folder `path`.

    The tensors transformers loaded are handed over, not copied; building the Loom model allocates
    its own (random) weights first, so the peak is two models' worth of memory for a moment."""
    official = read_hf(path)
    preset = official.preset
    model = model_class(preset)(preset, preset.vision, preset.llm, official.image_token_id, official.pad_token_id,
                                attn_implementation=attn_implementation or "sdpa",
                                connector_config=preset.connector_config)
    assign_weights(model, official.state, official.what)
    return model.to(device)


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
