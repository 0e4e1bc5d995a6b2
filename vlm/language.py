"""Language models of the bundled architectures, built from transformers' own classes.

Decoder-only LLMs (LLaMA/Vicuna/Llama-2, OPT, Qwen2) read the visual tokens spliced into their input
embeddings; FlanT5 is an encoder-decoder: the visual tokens prefix the encoder's input and the answer
is decoded. Qwen2-VL's LLM is Qwen2 with M-RoPE positions (temporal, height, width).
"""

from __future__ import annotations

from torch import nn

# kind -> (config class, model class), by name so that importing this module loads nothing heavy
LANGUAGE_MODELS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "opt": ("OPTConfig", "OPTForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "t5": ("T5Config", "T5ForConditionalGeneration"),
}


def build_language_model(kind: str, config: dict) -> nn.Module:
    """A randomly initialised language model of `kind` from transformers config kwargs."""
    import transformers

    if kind == "qwen2_vl":
        from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig
        from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLTextModel

        return Qwen2VLCausalLM(Qwen2VLTextModel(Qwen2VLTextConfig(**config)))
    if kind not in LANGUAGE_MODELS:
        raise ValueError(f"language model kind {kind!r}; expected one of {sorted(LANGUAGE_MODELS)} or qwen2_vl")
    config_class, model_class = (getattr(transformers, name) for name in LANGUAGE_MODELS[kind])
    return model_class(config_class(**config))


class Qwen2VLCausalLM(nn.Module):
    """Qwen2-VL's text model with an LM head: the causal-LM shape the other LLMs have (`.model`, `.lm_head`).

    The head is tied to the input embeddings when the config says `tie_word_embeddings` (Qwen2-VL-2B's
    checkpoint, whose transformers model holds the two as one parameter), else its own (7B, 72B)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config
        self.lm_head = nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=False)
        # Kept tied, not untied by a copy: fine-tuning trains the one matrix the checkpoint was trained with (a copy
        # would make a different model of it, 233M more parameters at 2B) and the export is the official layout again.
        if getattr(model.config, "tie_word_embeddings", False):
            self.lm_head.weight = model.get_input_embeddings().weight

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_attn_implementation(self, mode: str) -> None:
        self.model.set_attn_implementation(mode)

    def activation_checkpointing_enable(self) -> None:
        self.model.activation_checkpointing_enable()


def decoder_stack(language_model: nn.Module) -> nn.Module:
    """The part of a causal LM that maps input embeddings to hidden states (no LM head)."""
    return language_model.model
