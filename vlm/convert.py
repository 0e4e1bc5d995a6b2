"""Official Hugging Face checkpoints in and out: llava-hf LLaVA-1.5, Salesforce BLIP-2 and InstructBLIP, Qwen2-VL.

Each format says which transformers class holds it, which Loom preset its config maps to, and how
parameter names translate. Loading goes through transformers' own class (so sharded files, dtype and
its renaming of older checkpoint layouts are handled there) and hands the tensors to Loom's model
without copying them (ties follow the model: see `assign_weights`); exporting builds the transformers class on the meta device and assigns Loom's
tensors to it, so neither direction holds two copies of the weights.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from .connectors.qformer import QFormerConfig, from_hf_state_dict, to_hf_state_dict
from .preset import Preset, get_preset

# transformers config keys that describe a file rather than a model; not carried into a preset
_FILE_KEYS = ("transformers_version", "architectures", "_name_or_path", "torch_dtype", "dtype", "output_attentions",
              "output_hidden_states", "return_dict", "id2label", "label2id", "problem_type", "tokenizer_class",
              "chunk_size_feed_forward", "is_encoder_decoder")


def config_kwargs(config) -> dict[str, Any]:
    """A transformers sub-config as the kwargs that rebuild it (JSON-safe, file bookkeeping left out)."""
    data = config.to_dict()
    return {k: v for k, v in data.items() if k not in _FILE_KEYS and k != "model_type"}


def rename(state: dict[str, torch.Tensor], prefixes: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Keys moved from one prefix to another (first match wins); a key no prefix matches is an error."""
    renamed = {}
    for key, value in state.items():
        for old, new in prefixes:
            if key.startswith(old):
                renamed[new + key[len(old):]] = value
                break
        else:
            raise KeyError(f"parameter {key!r} has no place in the converted model (prefixes: {[p for p, _ in prefixes]})")
    return renamed


def swapped(prefixes: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(new, old) for old, new in prefixes]


@dataclass(frozen=True)
class HFFormat:
    """How one transformers model class maps onto a Loom preset."""

    model_type: str  # config.json's model_type
    hf_class: str  # the transformers class that loads and saves it
    preset_of: Callable[[Any], tuple[Preset, int, int]]  # HF config -> (preset, image_token_id, pad_token_id)
    from_hf: Callable[[dict, Preset], dict]  # HF state dict -> Loom state dict
    to_hf: Callable[[dict, Preset], dict]
    hf_config_of: Callable[[Any], Any]  # Loom model -> HF config


# ---------------------------------------------------------------------------------------------
# LLaVA-1.5 (llava-hf): CLIP tower, 2-layer GELU projector, a LLaMA-family LLM
# ---------------------------------------------------------------------------------------------

LLAVA_PREFIXES = [
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "connector."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
]


def _llm_kind(text_config, supported: tuple[str, ...], what: str) -> str:
    kind = text_config.model_type
    if kind not in supported:
        raise ValueError(f"{what} with a {kind!r} language model: Loom converts {', '.join(supported)} here")
    return kind


def _llava_preset(config) -> tuple[Preset, int, int]:
    vision = config.vision_config
    if config.projector_hidden_act != "gelu" or not getattr(config, "multimodal_projector_bias", True):
        raise ValueError(f"llava checkpoint with projector act {config.projector_hidden_act!r}: Loom's llava-1.5 "
                         "preset has a 2-layer GELU MLP with biases")
    if not isinstance(config.vision_feature_layer, int):
        raise ValueError(f"llava checkpoint reading vision layers {config.vision_feature_layer}: Loom reads one layer")
    keep_cls = config.vision_feature_select_strategy == "full"
    preset = dataclasses.replace(
        get_preset("llava-1.5"), name="llava-1.5", image_size=vision.image_size, patch_size=vision.patch_size,
        visual_tokens=(vision.image_size // vision.patch_size) ** 2 + int(keep_cls), vision=config_kwargs(vision),
        llm_kind=_llm_kind(config.text_config, ("llama", "qwen2"), "llava checkpoint"),
        llm=config_kwargs(config.text_config), vision_feature_layer=config.vision_feature_layer, keep_cls=keep_cls)
    pad = config.text_config.pad_token_id if config.text_config.pad_token_id is not None else getattr(config, "pad_token_id", 0)
    return preset, config.image_token_id, pad if pad is not None else 0


def _llava_hf_config(model):
    from transformers import CLIPVisionConfig, LlavaConfig, AutoConfig

    preset = model.preset
    text = AutoConfig.for_model(preset.llm_kind, **model.llm_config)
    return LlavaConfig(vision_config=CLIPVisionConfig(**model.vision_config).to_dict(), text_config=text.to_dict(),
                       image_token_id=model.image_token_id, vision_feature_layer=preset.vision_feature_layer,
                       vision_feature_select_strategy="full" if preset.keep_cls else "default",
                       projector_hidden_act="gelu", pad_token_id=model.pad_token_id,
                       image_seq_length=model.visual_tokens)


# ---------------------------------------------------------------------------------------------
# BLIP-2 and InstructBLIP (Salesforce): EVA tower, Q-Former, language_projection, OPT / Vicuna / FlanT5
# ---------------------------------------------------------------------------------------------

# What a stage-1 Q-Former holds beyond a generation checkpoint's (BLIP-2 only): the text path and the
# ITC / ITM / ITG heads. Exporting a BLIP-2 model trained from stage 1 leaves them out.
STAGE1_ONLY = re.compile(r"^(embeddings\.(word|position)_embeddings\.|encoder\.layer\.\d+\.(intermediate|output)\.|"
                         r"vision_proj\.|text_proj\.|itm_head\.|lm_head\.|temp$)")
BLIP_PREFIXES = [("vision_model.", "vision_tower."), ("language_projection.", "projection.linear_1."),
                 ("language_model.", "language_model.")]


def from_hf_blip(state: dict[str, torch.Tensor], variant: str) -> dict[str, torch.Tensor]:
    """A transformers Blip2ForConditionalGeneration ("blip2") or InstructBlipForConditionalGeneration
    ("instructblip") state dict, with any language model, under Loom's names."""
    qformer = {k: v for k, v in state.items() if k == "query_tokens" or k.startswith("qformer.")}
    rest = rename({k: v for k, v in state.items() if k not in qformer}, BLIP_PREFIXES)
    return {**rest, **{f"connector.{k}": v for k, v in from_hf_state_dict(qformer, variant).items()}}


def to_hf_blip(state: dict[str, torch.Tensor], variant: str) -> dict[str, torch.Tensor]:
    """Loom's state dict of a BLIP-2 / InstructBLIP preset under transformers' names; what those classes have
    no place for (BLIP-2's stage-1 text path and heads) is left out."""
    connector = {k[len("connector."):]: v for k, v in state.items() if k.startswith("connector.")}
    if variant == "blip2":
        connector = {k: v for k, v in connector.items() if not STAGE1_ONLY.match(k)}
    rest = rename({k: v for k, v in state.items() if not k.startswith("connector.")}, swapped(BLIP_PREFIXES))
    return {**rest, **to_hf_state_dict(connector, variant)}


def _blip_preset(config, variant: str) -> tuple[Preset, int, int]:
    kind = _llm_kind(config.text_config, ("opt", "llama", "t5"), f"{variant} checkpoint")
    name = {("blip2", "opt"): "blip2-opt", ("blip2", "t5"): "blip2-flant5", ("instructblip", "t5"): "instructblip-flant5",
            ("instructblip", "llama"): "instructblip-vicuna"}.get((variant, kind))
    if name is None:
        raise ValueError(f"{variant} checkpoint with a {kind!r} language model: no Loom preset has that pairing")
    if config.image_token_id is None:
        raise ValueError(f"this {variant} checkpoint's config has no image_token_id (an older processor layout); "
                         "set image_token_id in its config.json to the id of the image placeholder token its "
                         "processor adds, then load it again")
    # the checkpoint's Q-Former layout: BLIP-2's conditional-generation model has no text path
    qformer = dataclasses.asdict(QFormerConfig.from_hf(config.qformer_config, num_query_tokens=config.num_query_tokens,
                                                       stage1_heads=False))
    vision = config.vision_config
    preset = dataclasses.replace(
        get_preset(name), image_size=vision.image_size, patch_size=vision.patch_size,
        visual_tokens=config.num_query_tokens, vision=config_kwargs(vision), connector_config=qformer,
        llm=config_kwargs(config.text_config))
    pad = config.text_config.pad_token_id
    return preset, config.image_token_id, pad if pad is not None else 0


def _blip_hf_config(variant: str) -> Callable:
    def hf_config(model):
        from transformers import AutoConfig, Blip2Config, InstructBlipConfig

        q = QFormerConfig(**{k: v for k, v in model.connector_config.items()
                             if k in {f.name for f in dataclasses.fields(QFormerConfig)}})
        qformer = dict(hidden_size=q.hidden_size, num_hidden_layers=q.num_hidden_layers,
                       num_attention_heads=q.num_attention_heads, intermediate_size=q.intermediate_size,
                       hidden_act=q.hidden_act, cross_attention_frequency=q.cross_attention_frequency,
                       encoder_hidden_size=q.encoder_hidden_size, vocab_size=q.vocab_size,
                       max_position_embeddings=q.max_position_embeddings, layer_norm_eps=q.layer_norm_eps,
                       pad_token_id=q.pad_token_id)
        text = AutoConfig.for_model(model.preset.llm_kind, **model.llm_config)
        config_class = Blip2Config if variant == "blip2" else InstructBlipConfig
        return config_class(vision_config=dict(model.vision_config), qformer_config=qformer,
                            text_config=text.to_dict(), num_query_tokens=q.num_query_tokens,
                            image_token_id=model.image_token_id)
    return hf_config


# ---------------------------------------------------------------------------------------------
# Qwen2-VL: native-resolution ViT with its patch merger, Qwen2 with M-RoPE
# ---------------------------------------------------------------------------------------------

def _qwen2_vl_preset(config) -> tuple[Preset, int, int]:
    vision, text = config.vision_config, config.text_config
    base = get_preset("qwen2-vl")
    image = base.image_size  # the reference size visual_tokens is quoted for; real images keep their own
    # transformers keeps tie_word_embeddings on the outer config (Qwen2-VL-2B ties, 7B does not); Loom's LLM
    # reads it from its own config and ties its head as the checkpoint does (see vlm.language.Qwen2VLCausalLM)
    llm = dict(config_kwargs(text), tie_word_embeddings=bool(config.tie_word_embeddings))
    preset = dataclasses.replace(
        base, patch_size=vision.patch_size, vision=config_kwargs(vision), llm=llm,
        visual_tokens=(image // vision.patch_size) ** 2 // vision.spatial_merge_size ** 2)
    pad = text.pad_token_id if getattr(text, "pad_token_id", None) is not None else 0
    return preset, config.image_token_id, pad


def _qwen2_vl_hf_config(model):
    return model.transformers_config()


# (transformers prefix, Loom prefix), most specific first. transformers >= 4.52 nests the ViT and the
# text model under `model.`; the Hub's Qwen/Qwen2-VL-* checkpoints keep the older `visual.` / `model.`.
QWEN2_VL_PREFIXES = {
    "transformers": (("model.visual.merger.", "connector."), ("model.visual.", "vision_tower."),
                     ("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head.")),
    "checkpoint": (("visual.merger.", "connector."), ("visual.", "vision_tower."),
                   ("model.", "language_model.model."), ("lm_head.", "language_model.lm_head.")),
}


def _renamed_key(key: str, rules: Sequence[tuple[str, str]]) -> str | None:
    for old, new in rules:
        if key.startswith(old):
            return new + key[len(old):]
    return None


def from_hf_qwen2_vl_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Qwen2VLM weights from a transformers Qwen2VLForConditionalGeneration state dict or a Hub checkpoint.

    Either layout is read (see QWEN2_VL_PREFIXES). A checkpoint file with tied embeddings holds no lm_head
    (Qwen2-VL-2B's): the LM head gets a copy of the input embeddings, which a tied Loom model (its LLM
    config says tie_word_embeddings, as `_qwen2_vl_preset` sets it) holds as one parameter again on loading.
    """
    layout = "transformers" if any(k.startswith(("model.visual.", "model.language_model.")) for k in state_dict) \
        else "checkpoint"
    converted = {}
    for key, value in state_dict.items():
        name = _renamed_key(key, QWEN2_VL_PREFIXES[layout])
        if name is None:
            raise ValueError(f"weight {key!r} is not part of a Qwen2-VL checkpoint ({layout} layout): expected a key "
                             f"under {', '.join(old for old, _ in QWEN2_VL_PREFIXES[layout])}")
        converted[name] = value
    if "language_model.lm_head.weight" not in converted and "language_model.model.embed_tokens.weight" in converted:
        converted["language_model.lm_head.weight"] = converted["language_model.model.embed_tokens.weight"].clone()
    return converted


def to_hf_qwen2_vl_state_dict(state_dict: Mapping[str, torch.Tensor], layout: str = "transformers") -> dict[str, torch.Tensor]:
    """A Qwen2VLM state dict under transformers' names: `layout` "transformers" (Qwen2VLForConditionalGeneration's
    own state dict) or "checkpoint" (the Hub files' `visual.` / `model.` names)."""
    if layout not in QWEN2_VL_PREFIXES:
        raise ValueError(f"layout {layout!r}; expected one of {list(QWEN2_VL_PREFIXES)}")
    rules = [(new, old) for old, new in QWEN2_VL_PREFIXES[layout]]
    converted = {}
    for key, value in state_dict.items():
        name = _renamed_key(key, rules)
        if name is None:
            raise ValueError(f"weight {key!r} is not a Qwen2VLM weight: expected a key under "
                             f"{', '.join(new for new, _ in rules)}")
        converted[name] = value
    return converted


def _qwen2_vl_from_hf(state: dict, preset: Preset) -> dict:
    return from_hf_qwen2_vl_state_dict(state)


def _qwen2_vl_to_hf(state: dict, preset: Preset) -> dict:
    return to_hf_qwen2_vl_state_dict(state)


# ---------------------------------------------------------------------------------------------
# The registry, and the two directions
# ---------------------------------------------------------------------------------------------

FORMATS: dict[str, HFFormat] = {
    "llava": HFFormat("llava", "LlavaForConditionalGeneration", _llava_preset,
                      lambda state, preset: rename(state, LLAVA_PREFIXES),
                      lambda state, preset: rename(state, swapped(LLAVA_PREFIXES)), _llava_hf_config),
    "blip-2": HFFormat("blip-2", "Blip2ForConditionalGeneration", lambda config: _blip_preset(config, "blip2"),
                       lambda state, preset: from_hf_blip(state, "blip2"),
                       lambda state, preset: to_hf_blip(state, "blip2"), _blip_hf_config("blip2")),
    "instructblip": HFFormat("instructblip", "InstructBlipForConditionalGeneration",
                             lambda config: _blip_preset(config, "instructblip"),
                             lambda state, preset: from_hf_blip(state, "instructblip"),
                             lambda state, preset: to_hf_blip(state, "instructblip"), _blip_hf_config("instructblip")),
    "qwen2_vl": HFFormat("qwen2_vl", "Qwen2VLForConditionalGeneration", _qwen2_vl_preset, _qwen2_vl_from_hf,
                         _qwen2_vl_to_hf, _qwen2_vl_hf_config),
}
# the Loom architectures each format exports
EXPORTS = {"llava-1.5": "llava", "blip2-opt": "blip-2", "blip2-flant5": "blip-2", "instructblip-vicuna": "instructblip",
           "instructblip-flant5": "instructblip", "qwen2-vl": "qwen2_vl"}


def hf_format_of(model_type: str) -> HFFormat:
    if model_type not in FORMATS:
        raise ValueError(f"a {model_type!r} checkpoint: Loom loads {', '.join(sorted(FORMATS))} checkpoints "
                         "(and its own format, a config.json with a 'model' entry)")
    return FORMATS[model_type]


@dataclass(frozen=True)
class HFWeights:
    """An official checkpoint as Loom reads it: the preset its config maps to, its image and pad token ids,
    and its tensors under Loom's names (those transformers loaded, not copies)."""

    preset: Preset
    image_token_id: int
    pad_token_id: int
    state: dict[str, torch.Tensor]
    what: str  # the folder and its transformers class, as an error names them


def read_hf(path) -> HFWeights:
    """The official checkpoint in folder `path`, loaded by its own transformers class (so sharded files, dtype
    and its renaming of older layouts are handled there); `vlm.checkpoint.load_hf` builds the Loom model."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(path)
    fmt = hf_format_of(config.model_type)
    preset, image_token_id, pad_token_id = fmt.preset_of(config)
    hf_model = getattr(transformers, fmt.hf_class).from_pretrained(path, dtype=torch.float32)
    state = fmt.from_hf(hf_model.state_dict(), preset)
    return HFWeights(preset, image_token_id, pad_token_id, state, f"{path} ({fmt.hf_class})")


def save_hf(model, path) -> None:
    """Write `model` as the official transformers checkpoint of its architecture."""
    to_transformers(model).save_pretrained(path)


def to_transformers(model):
    """`model` as the transformers class of its architecture, holding the same tensors (none copied)."""
    import transformers

    name = model.preset.architecture
    if name not in EXPORTS:
        raise ValueError(f"{name}: transformers has no class for this architecture; save it with format='loom' "
                         f"(formats with a transformers class: {', '.join(sorted(EXPORTS))})")
    fmt = FORMATS[EXPORTS[name]]
    hf_model = getattr(transformers, fmt.hf_class)(fmt.hf_config_of(model))
    assign_weights(hf_model, fmt.to_hf(dict(model.state_dict()), model.preset), fmt.hf_class)
    return hf_model


def assign_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str,
                   spell: Callable[[list[str]], list[str]] = list) -> None:
    """Put `state`'s tensors into `module` (no copy); every parameter must be given, and nothing else (the
    error names them as `spell` gives the module's names, e.g. as the checkpoint spells them).

    Ties follow `module`, not the checkpoint: parameters the module ties (an LM head that is the input
    embeddings) are one parameter again afterwards, given once or twice; names it keeps apart never share
    storage, even where the checkpoint's did (they get a copy). Assigning alone would leave either kind as
    two parameters over one storage, which an optimizer updates twice and a save writes once."""
    names_of: dict[int, list[str]] = {}
    for name, parameter in module.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(parameter), []).append(name)
    ties = {other: names[0] for names in names_of.values() for other in names[1:]}  # tied name -> its first name
    state = dict(state)
    for name, first in ties.items():
        if name not in state:
            continue
        tensor = state.pop(name)
        given = state.setdefault(first, tensor)
        if given.data_ptr() != tensor.data_ptr() and not torch.equal(given, tensor):
            raise ValueError(f"{what}: {name} and {first} are one parameter in the model but differ in the "
                             "checkpoint; its config's tie_word_embeddings does not describe its weights")
    owner_of = {}
    for name, tensor in state.items():
        if tensor.numel() and tensor.data_ptr() in owner_of:
            state[name] = tensor.clone()  # one tensor in the checkpoint, two parameters in the model
        else:
            owner_of[tensor.data_ptr()] = name
    missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    missing = [name for name in missing if name not in ties]
    if missing or unexpected:
        raise ValueError(f"{what}: the weights do not fit; missing {spell(missing[:8])}{'...' if len(missing) > 8 else ''}"
                         f", no place for {spell(unexpected[:8])}{'...' if len(unexpected) > 8 else ''}")
    for name, first in ties.items():
        owner, _, attribute = name.rpartition(".")
        setattr(module.get_submodule(owner), attribute, module.get_parameter(first))
