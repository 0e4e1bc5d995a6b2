"""LoRA on one group of a VLM, through peft: adapters attached for a stage, merged into plain weights at every save.

A LoRA stage (`Stage.lora`) freezes a group's own weights and trains, beside each targeted linear layer W,
two small matrices A (rank x in) and B (out x rank): the layer computes W x + (alpha / rank) B A x. peft
injects them in place (`inject_adapter_in_model`), so the model keeps its slots and its forward.

Loom's checkpoints stay plain: every save writes W + (alpha / rank) B A under the layer's own name
(`merged`), so a stage's model.safetensors loads, chains into the next stage and exports without peft.
A checkpoint written in the middle of a stage also keeps `lora.safetensors`: the adapters and the unmerged
W they sit on, from which a resume continues bit for bit. peft is imported only when adapters are attached:
a machine that never trains a LoRA stage needs torch and transformers alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from .preset import LoRA

ADAPTERS = "lora.safetensors"  # in a mid-stage checkpoint folder
ADAPTER = "default"  # peft's name for the one adapter a stage trains


def attach(model: nn.Module, lora: LoRA, seed: int = 0) -> list[str]:
    """Adapters on `lora.targets` in group `lora.group` of `model`; that group's own weights are frozen, the
    adapters trainable (A drawn from `seed`, B zero: the model computes what it did before). Returns the
    names of the adapted layers."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as err:
        raise ImportError(f"a LoRA stage needs peft ({err}); install it with pip install 'peft>=0.13'") from err
    check_targets(model, lora)
    group = model.groups[lora.group]
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.targets),
                        bias="none")
    group.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):  # every worker, and a resumed run, draws the same A
        torch.manual_seed(seed)
        inject_adapter_in_model(config, group)
    return list(layers(model))


def check_targets(model: nn.Module, lora: LoRA) -> None:
    """Refuses a group the model lacks, and a target that names no linear layer of the group: peft matches a
    target by the end of a module's name and adapts the others silently; Loom merges into linear layers only."""
    if lora.group not in model.groups:
        raise ValueError(f"lora.group: {lora.group!r}; this model's groups are {list(model.groups)}")
    names = [name for name, module in model.groups[lora.group].named_modules()]
    linear = [name for name, module in model.groups[lora.group].named_modules() if isinstance(module, nn.Linear)]
    for target in lora.targets:
        matched = [name for name in names if name == target or name.endswith(f".{target}")]
        if not matched or set(matched) - set(linear):
            raise ValueError(f"lora.targets: {target!r} names {'no layer' if not matched else 'layers that are not linear'} "
                             f"of group {lora.group!r}; its linear layers are named "
                             f"{sorted({name.rsplit('.', 1)[-1] for name in linear})}")


def layers(model: nn.Module) -> dict[str, nn.Module]:
    """The adapted layers of `model` by module name (none when peft was never imported)."""
    if "peft" not in sys.modules:
        return {}
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def merged(state: dict[str, torch.Tensor], model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(plain weights, adapter state) of a state dict of `model` with adapters attached: each adapted layer's
    weight is W + scaling · B A under the layer's own name, bit for bit what peft's merge computes on a CPU
    (where a state dict to save lies; B A in fp32 for half-precision weights); the adapter state keeps A, B and
    the unmerged W, exactly as they are."""
    plain, adapters = dict(state), {}
    for name, layer in layers(model).items():
        base, a, b = (f"{name}.base_layer.weight", f"{name}.lora_A.{ADAPTER}.weight", f"{name}.lora_B.{ADAPTER}.weight")
        weight, down, up = plain.pop(base), plain.pop(a), plain.pop(b)
        adapters.update({base: weight, a: down, b: up})
        half = weight.dtype in (torch.float16, torch.bfloat16)
        delta = (up.float() @ down.float() if half else up @ down) * layer.scaling[ADAPTER]
        plain[f"{name}.weight"] = weight + delta.to(weight.dtype)
        if f"{name}.base_layer.bias" in plain:
            plain[f"{name}.bias"] = plain.pop(f"{name}.base_layer.bias")
    return plain, adapters


def load_adapters(model: nn.Module, file: Path) -> None:
    """Loads a checkpoint's lora.safetensors into `model` with the same adapters attached: A, B and the
    unmerged weights under them, so the stage continues where it stopped."""
    from safetensors.torch import load_file

    state = load_file(file)
    expected = {k for k in model.state_dict() if ".lora_" in k or k.endswith(".base_layer.weight")}
    if set(state) != expected:
        raise ValueError(f"{file}: adapters do not fit this stage's LoRA; missing {sorted(expected - set(state))[:4]}, "
                         f"unexpected {sorted(set(state) - expected)[:4]}")
    model.load_state_dict(state, strict=False)


def detach(model: nn.Module) -> None:
    """Takes the adapters out, leaving each layer's own (unmerged) weight: the model is plain again."""
    for name, layer in layers(model).items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.get_base_layer())
    for module in model.modules():
        if "peft_config" in vars(module):  # the record inject_adapter_in_model leaves on the group
            del module.peft_config
