"""Architecture presets: the LLaVA-1.5 recipe as configuration, at published and tiny size.

A preset says what the three slots of a VLM are (vision tower, connector,
language model), how images are prepared, and which training stages the paper
runs. Building weights is `vlm.model.build_model`'s job; a preset never holds
weights, so the published size costs nothing to describe.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# Parameter groups a stage can unfreeze: the three slots of the model.
GROUPS = ("vision", "connector", "llm")

# OpenAI CLIP's normalisation constants (the ones LLaVA-1.5's image processor uses).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Stage:
    """One training stage: which groups learn, on which data, with what schedule."""

    name: str
    trainable: tuple[str, ...]
    data: str  # the pack key this stage reads, e.g. "pretrain" or "instruct"
    lr: float
    epochs: int = 1
    max_steps: int | None = None  # overrides epochs when set
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    global_batch_size: int | None = None  # the paper's, for reference; the trainer's config decides
    objective: str = "lm"

    def __post_init__(self):
        unknown = set(self.trainable) - set(GROUPS)
        if unknown or not self.trainable:
            raise ValueError(
                f"stage {self.name!r}: trainable groups {list(self.trainable)} must be a non-empty subset of {list(GROUPS)}"
            )
        if self.objective != "lm":
            raise ValueError(f"stage {self.name!r}: objective {self.objective!r} is not supported; use 'lm'")


@dataclass(frozen=True)
class Preset:
    """A vision-language architecture: vision tower + connector + LLM, image recipe and stages."""

    name: str
    architecture: str
    chat_format: str
    image_size: int
    patch_size: int
    vision: dict[str, Any]  # transformers CLIPVisionConfig kwargs
    llm: dict[str, Any]  # transformers LlamaConfig kwargs
    stages: tuple[Stage, ...]
    vision_feature_layer: int = -2  # LLaVA-1.5 reads the penultimate ViT layer
    projector: str = "mlp2x_gelu"
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    image_token: str = "<image>"

    @property
    def visual_tokens(self) -> int:
        """LLM positions one image occupies: one per patch, the CLS token dropped."""
        return (self.image_size // self.patch_size) ** 2

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"preset {self.name!r} has no stage {name!r}; its stages are {[s.name for s in self.stages]}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preset":
        data = dict(data)
        data["stages"] = tuple(
            Stage(**{**s, "trainable": tuple(s["trainable"])}) for s in data["stages"]
        )
        data["image_mean"] = tuple(data["image_mean"])
        data["image_std"] = tuple(data["image_std"])
        return cls(**data)


# LLaVA-1.5 (Liu et al., "Improved Baselines with Visual Instruction Tuning", 2023; haotian-liu/LLaVA):
# CLIP ViT-L/14 at 336 px (openai/clip-vit-large-patch14-336), features of the penultimate layer
# without CLS, a 2-layer GELU MLP, Vicuna-7B v1.5. Stage 1 trains the projector on LCS-558K
# (lr 1e-3, batch 256); stage 2 trains projector + LLM on the 665K mix (lr 2e-5, batch 128).
# Both: 1 epoch, cosine schedule, 3% warmup, no weight decay; the vision tower stays frozen.
LLAVA_15 = Preset(
    name="llava-1.5",
    architecture="llava-1.5",
    chat_format="llava_v1",
    image_size=336,
    patch_size=14,
    vision=dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    ),
    llm=dict(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        hidden_act="silu",
        tie_word_embeddings=False,
    ),
    stages=(
        Stage("pretrain", trainable=("connector",), data="pretrain", lr=1e-3, epochs=1,
              warmup_ratio=0.03, global_batch_size=256),
        Stage("instruct", trainable=("connector", "llm"), data="instruct", lr=2e-5, epochs=1,
              warmup_ratio=0.03, global_batch_size=128),
    ),
)

# Same shape of model, small enough to train on a laptop CPU in minutes. The vocabulary
# comes from the tokenizer at build time (build_model's vocab_size). Learning rates are
# higher than the paper's: a randomly initialised tiny LLM has nothing to forget.
LLAVA_15_TINY = Preset(
    name="llava-1.5-tiny",
    architecture="llava-1.5",
    chat_format="llava_v1",
    image_size=64,
    patch_size=8,
    vision=dict(
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=64,
        patch_size=8,
        projection_dim=64,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    ),
    llm=dict(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        hidden_act="silu",
        tie_word_embeddings=False,
    ),
    stages=(
        Stage("pretrain", trainable=("connector",), data="pretrain", lr=2e-3, epochs=1, warmup_ratio=0.03),
        Stage("instruct", trainable=("connector", "llm"), data="instruct", lr=1e-3, epochs=1, warmup_ratio=0.03),
    ),
)

PRESETS: dict[str, Preset] = {p.name: p for p in (LLAVA_15, LLAVA_15_TINY)}


def get_preset(name: str) -> Preset:
    """The preset registered under `name`."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None


def stages(name: str) -> list[Stage]:
    """The training stages of preset `name`, in the order they run."""
    return list(get_preset(name).stages)
