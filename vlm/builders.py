"""Building a model of a preset: the class that runs it, a random initialisation, a rebuild from a config.

`vlm.model`'s VisionLanguageModel runs decoder-only LLMs fed spliced visual tokens; its subclasses run what
that cannot: `vlm.seq2seq`'s an encoder-decoder LLM (FlanT5), `vlm.qwen2_vl`'s Qwen2-VL's native resolution.
Choosing among them lives here, above all three, so that no class imports its subclasses.
"""

from __future__ import annotations

from typing import Any

import torch

from .model import VisionLanguageModel
from .preset import Preset, get_preset
from .qwen2_vl import Qwen2VLM
from .seq2seq import EncoderDecoderVLM


def model_class(preset: Preset) -> type[VisionLanguageModel]:
    """The class that runs a preset: vlm.seq2seq's for an encoder-decoder LLM (FlanT5), vlm.qwen2_vl's for
    native-resolution images (Qwen2-VL), vlm.model's otherwise."""
    if preset.encoder_decoder:
        return EncoderDecoderVLM
    if preset.native_resolution:
        return Qwen2VLM
    return VisionLanguageModel


def build_model(
    preset: Preset | str,
    vocab_size: int | None,
    image_token_id: int,
    pad_token_id: int,
    attn_implementation: str = "sdpa",
    seed: int | None = 0,
) -> VisionLanguageModel:
    """A randomly initialised VLM of `preset`, its vocabulary sized for the tokenizer.

    vocab_size None keeps the preset's; `<image>` must be a token of the vocabulary, as
    its embedding row is where image features are written.

    Published sizes allocate real memory (7B parameters for llava-1.5); wrap the call
    in `with torch.device("meta"):` to inspect one without allocating.
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    llm_config = dict(preset.llm, pad_token_id=pad_token_id)
    if vocab_size is not None:
        llm_config["vocab_size"] = int(vocab_size)
    if not 0 <= image_token_id < llm_config["vocab_size"]:
        raise ValueError(f"image_token_id {image_token_id} is outside the vocabulary of {llm_config['vocab_size']}")
    # Seeded without disturbing the caller's RNG stream.
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return model_class(preset)(
            preset, preset.vision, llm_config, image_token_id, pad_token_id, attn_implementation=attn_implementation
        )


def build(name: str, size: str = "published", vocab_size: int | None = None, image_token_id: int | None = None,
          pad_token_id: int = 0, attn_implementation: str = "sdpa", seed: int | None = 0) -> VisionLanguageModel:
    """A randomly initialised model of architecture `name` at `size` ("published" or "tiny").

    The image placeholder takes the last id of the vocabulary unless `image_token_id` is given (a
    tokenizer with `<image>` added as a special token gives its id)."""
    preset = get_preset(name, size=size)
    vocab = vocab_size if vocab_size is not None else preset.llm["vocab_size"]
    return build_model(preset, vocab, vocab - 1 if image_token_id is None else image_token_id, pad_token_id,
                       attn_implementation=attn_implementation, seed=seed)


def from_config_dict(config: dict[str, Any], attn_implementation: str | None = None) -> VisionLanguageModel:
    """The model a checkpoint's config describes (`VisionLanguageModel.config_dict`), of the class that runs
    its preset, with fresh weights."""
    preset = Preset.from_dict(config["preset"])
    return model_class(preset)(
        preset,
        config["vision_config"],
        config["llm_config"],
        image_token_id=config["image_token_id"],
        pad_token_id=config["pad_token_id"],
        attn_implementation=attn_implementation or config.get("attn_implementation", "sdpa"),
        connector_config=config.get("connector_config"),
    )
