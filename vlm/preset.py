"""Architecture presets: the ten bundled VLMs as configuration, at published and at tiny size.

A preset fills the three slots of one model (vision tower, connector, language model) with
transformers config kwargs and a connector config, says how images are prepared and how many
LLM positions one image takes, names its chat format, and lists the training stages of its
paper. Building weights is `vlm.builders.build_model`'s job; a preset never holds weights, so a
published size costs nothing to describe.

`get_preset("blip2-opt")` is the published size; `get_preset("blip2-opt", size="tiny")` (or the
name "blip2-opt-tiny") is the same architecture small enough to train on a CPU in a test.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

# Parameter groups a stage can unfreeze. "projection" is the layer after a Q-Former that maps its
# queries to the LLM width (BLIP-2's language_projection, MiniGPT-4's llama_proj); connectors
# without a separate projection have only "connector".
GROUPS = ("vision", "connector", "projection", "llm")
SIZES = ("published", "tiny")
OBJECTIVES = ("lm", "itc_itm_itg")  # next-token loss; BLIP-2's Q-Former stage-1 losses
VISION_KINDS = ("clip", "eva", "qwen_vl", "qwen2_vl")
LLM_KINDS = ("llama", "opt", "t5", "qwen2", "qwen2_vl")
CONNECTOR_KINDS = ("linear", "mlp2x_gelu", "qformer", "instruct_qformer", "qformer_linear", "resampler",
                   "token_concat", "patch_merger")
QFORMER_CONNECTORS = ("qformer", "instruct_qformer", "qformer_linear")  # Q-Former, then a projection to the LLM

# OpenAI CLIP's normalisation constants (CLIP, LLaVA, BLIP-2's EVA tower, Qwen-VL, Qwen2-VL all use them).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class LoRA:
    """Low-rank adapters on one group's linear layers (peft's LoRA): W stays frozen and W + (alpha/rank)·B·A
    is what the stage learns. `targets` are the layers' names inside the group (the last part of the module
    name, as peft matches them: q_proj, v_proj in LLaMA, OPT and Qwen2; q, v in T5)."""

    rank: int
    alpha: float
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    group: str = "llm"

    @classmethod
    def from_dict(cls, fields: dict) -> "LoRA":
        return cls(**{**fields, "targets": tuple(fields.get("targets", cls.targets))})

    def to_dict(self) -> dict[str, Any]:
        """Its JSON form (a list of targets), as a checkpoint and a stage summary hold it."""
        return {**dataclasses.asdict(self), "targets": list(self.targets)}

    def __post_init__(self):
        # named "lora.KEY" so that a config's errors read train.stages.NAME.lora.KEY
        number = (int, float)
        problems = [
            ("rank", isinstance(self.rank, int) and not isinstance(self.rank, bool) and self.rank >= 1,
             "a whole number >= 1 (MiniGPT-v2: 64)"),
            ("alpha", isinstance(self.alpha, number) and not isinstance(self.alpha, bool) and self.alpha > 0,
             "a number > 0; the adapters are scaled by alpha / rank (MiniGPT-v2: 16)"),
            ("dropout", isinstance(self.dropout, number) and not isinstance(self.dropout, bool) and 0 <= self.dropout < 1,
             "a probability in [0, 1) (MiniGPT-v2: 0.05)"),
            ("targets", isinstance(self.targets, tuple) and bool(self.targets)
             and all(isinstance(t, str) and t for t in self.targets),
             "a non-empty list of linear layer names, e.g. [q_proj, v_proj]"),
            ("group", self.group in GROUPS, f"one of {list(GROUPS)}"),
        ]
        for key, valid, expected in problems:
            if not valid:
                value = list(self.targets) if key == "targets" and isinstance(self.targets, tuple) else getattr(self, key)
                raise ValueError(f"lora.{key}: {value!r}; expected {expected}")


# MiniGPT-v2 trains Llama-2-chat through LoRA in all three stages, its base weights frozen: rank 64, alpha 16,
# dropout 0.05 on q_proj and v_proj (Vision-CAIR/MiniGPT-4 minigpt4/models/minigpt_v2.py: lora_r=64,
# lora_target_modules=["q_proj", "v_proj"], lora_alpha=16, lora_dropout=0.05; minigpt4/models/base_model.py
# init_llm: LoraConfig(r, bias="none", task_type="CAUSAL_LM", ...) then get_peft_model; the stage configs
# minigpt4/configs/models/minigpt_v2.yaml and train_configs/minigptv2_finetune.yaml set lora_r 64, lora_alpha 16).
MINIGPT_V2_LORA = LoRA(rank=64, alpha=16, dropout=0.05, targets=("q_proj", "v_proj"), group="llm")


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
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW's
    global_batch_size: int | None = None  # the paper's, for reference; the trainer's config decides
    objective: str = "lm"
    image_size: int | None = None  # the stage's own resolution where the paper changes it (Qwen-VL: 224 then 448)
    # what a Q-Former reads in its own vocabulary in this stage: "caption" (BLIP-2's stage 1), "instruction"
    # (InstructBLIP's instruction tuning), or None (queries alone)
    qformer_text: str | None = None
    # LoRA on one of the trainable groups: that group learns through adapters, its own weights frozen
    # (MiniGPT-v2's LLM); None trains every trainable group whole
    lora: LoRA | None = None

    @classmethod
    def from_dict(cls, fields: dict) -> "Stage":
        """A stage from its JSON form (lists where the dataclass holds tuples)."""
        lora = fields.get("lora")
        return cls(**{**fields, "trainable": tuple(fields["trainable"]), "betas": tuple(fields.get("betas", cls.betas)),
                      "lora": LoRA.from_dict(lora) if lora else None})

    def __post_init__(self):
        unknown = set(self.trainable) - set(GROUPS)
        if unknown or not self.trainable:
            raise ValueError(
                f"stage {self.name!r}: trainable groups {list(self.trainable)} must be a non-empty subset of {list(GROUPS)}"
            )
        if self.objective not in OBJECTIVES:
            raise ValueError(f"stage {self.name!r}: objective {self.objective!r}; expected one of {list(OBJECTIVES)}")
        if self.lora is not None and self.lora.group not in self.trainable:
            raise ValueError(f"stage {self.name!r}: lora.group {self.lora.group!r} is frozen in this stage (it trains "
                             f"{list(self.trainable)}); add {self.lora.group!r} to its trainable groups or put the "
                             "adapters on one of them")


@dataclass(frozen=True)
class Preset:
    """A vision-language architecture: vision tower + connector + LLM, image recipe and stages."""

    name: str
    architecture: str  # the published name, e.g. "blip2-opt"; tiny sizes share it
    size: str
    chat_format: str
    image_size: int
    patch_size: int
    visual_tokens: int  # LLM positions one image takes
    vision_kind: str
    vision: dict[str, Any]  # transformers config kwargs of the vision tower
    connector: str
    connector_config: dict[str, Any]
    llm_kind: str
    llm: dict[str, Any]  # transformers config kwargs of the language model
    stages: tuple[Stage, ...]
    # Which vision hidden state feeds the connector: the penultimate layer, the papers' choice. BLIP-2's
    # EVA tower ships with its last layer already removed (39 of 40), so there the last layer *is* the
    # original penultimate one, read after the tower's final LayerNorm (LAVIS's ln_vision).
    vision_feature_layer: int = -2
    vision_post_norm: bool = False
    keep_cls: bool = False
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    image_token: str = "<image>"
    sources: tuple[str, ...] = field(default=())  # where the configuration was read

    def __post_init__(self):
        for value, allowed, what in ((self.vision_kind, VISION_KINDS, "vision_kind"), (self.llm_kind, LLM_KINDS, "llm_kind"),
                                     (self.connector, CONNECTOR_KINDS, "connector"), (self.size, SIZES, "size")):
            if value not in allowed:
                raise ValueError(f"preset {self.name!r}: {what} {value!r}; expected one of {list(allowed)}")

    @property
    def groups(self) -> tuple[str, ...]:
        """The parameter groups this architecture has."""
        return tuple(g for g in GROUPS if g != "projection" or self.has_qformer)

    @property
    def has_qformer(self) -> bool:
        """Whether a Q-Former turns each image into queries (BLIP-2, InstructBLIP, MiniGPT-4's frozen one),
        followed by a projection to the LLM width: the "projection" group."""
        return self.connector in QFORMER_CONNECTORS

    @property
    def qformer_instruction_length(self) -> int:
        """Q-Former ids an instruction takes at most, [CLS] and [SEP] included (InstructBLIP): what pack
        writes, and what evaluation and export read."""
        return min(128, self.connector_config.get("max_position_embeddings", 512))

    @property
    def visual_token_count_fixed(self) -> bool:
        """Whether an image takes the same LLM positions at any resolution (a Q-Former's or a resampler's
        queries, not a token per patch or patch group), so that a stage may train at another image size."""
        return self.has_qformer or self.connector == "resampler"

    @property
    def native_resolution(self) -> bool:
        """Whether images keep their own size (Qwen2-VL): each is cut into patches as it is and takes as many
        LLM positions as its patches make (`visual_tokens_for`); every other preset resizes to image_size."""
        return self.vision_kind == "qwen2_vl"

    @property
    def qformer_text(self) -> str | None:
        """What the Q-Former reads in its own (BERT) vocabulary, packed with each image: InstructBLIP's
        instruction, or BLIP-2's caption (its stage-1 ITC / ITM / ITG losses); None without a text path."""
        return {"instruct_qformer": "instruction", "qformer": "caption"}.get(self.connector)

    @property
    def default_lora(self) -> LoRA:
        """The LoRA `train.stages.NAME.lora: true` turns on in a stage without its own: MiniGPT-v2's published
        setting on the LLM's query and value projections, as this LLM names them."""
        return dataclasses.replace(MINIGPT_V2_LORA, targets=("q", "v") if self.llm_kind == "t5" else ("q_proj", "v_proj"))

    @property
    def encoder_decoder(self) -> bool:
        return self.llm_kind == "t5"

    def visual_tokens_for(self, image: dict) -> int:
        """LLM positions one image takes: the preset's count, or for Qwen2-VL the count of its 14-px patches
        after its resize rule, merged 2x2 (`image` holds the reference's width and height)."""
        if not self.native_resolution:
            return self.visual_tokens
        return qwen2_vl_visual_tokens(image, self.patch_size, self.vision.get("spatial_merge_size", 2))

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
        data.pop("qformer_text", None)  # written by an earlier version; derived from the connector now
        if "connector" not in data:  # a checkpoint written before presets named their connector (LLaVA-1.5 only)
            data.pop("projector", None)
            data.update(connector="mlp2x_gelu", connector_config={}, vision_kind="clip", llm_kind="llama",
                        size="tiny" if data["name"].endswith("-tiny") else "published",
                        visual_tokens=(data["image_size"] // data["patch_size"]) ** 2)
        data["stages"] = tuple(Stage.from_dict(s) for s in data["stages"])
        for key in ("image_mean", "image_std", "sources"):
            data[key] = tuple(data.get(key, ()))
        return cls(**data)


# Qwen2-VL's image processor (Qwen2VLImageProcessor / smart_resize): both sides rounded to a multiple of
# patch 14 x merge 2 = 28 px, then scaled so that the area lies within [min_pixels, max_pixels]
QWEN2_VL_FACTOR, QWEN2_VL_MIN_PIXELS, QWEN2_VL_MAX_PIXELS = 28, 56 * 56, 28 * 28 * 1280


def qwen2_vl_resized(height: int, width: int, factor: int = QWEN2_VL_FACTOR, min_pixels: int = QWEN2_VL_MIN_PIXELS,
                     max_pixels: int = QWEN2_VL_MAX_PIXELS) -> tuple[int, int]:
    """(height, width) Qwen2-VL resizes an image to: multiples of `factor`, area within [min, max] pixels."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"image {width}x{height}: Qwen2-VL refuses an aspect ratio above 200")
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        h, w = max(factor, math.floor(height / scale / factor) * factor), max(factor, math.floor(width / scale / factor) * factor)
    elif h * w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * scale / factor) * factor, math.ceil(width * scale / factor) * factor
    return h, w


def qwen2_vl_visual_tokens(image: dict, patch_size: int = 14, merge_size: int = 2, **resize) -> int:
    """LLM positions of one image in Qwen2-VL: its 14-px patches after the resize rule, merged 2x2."""
    h, w = qwen2_vl_resized(int(image["height"]), int(image["width"]), factor=patch_size * merge_size, **resize)
    return (h // patch_size) * (w // patch_size) // (merge_size * merge_size)


# ---------------------------------------------------------------------------------------------
# Shared parts, published size
# ---------------------------------------------------------------------------------------------

# OpenAI CLIP ViT-L/14 (openai/clip-vit-large-patch14[-336]): LLaVA's tower
def _clip_vit_l(image_size: int) -> dict[str, Any]:
    return dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                image_size=image_size, patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5)


# EVA ViT-g/14 as BLIP-2 ships it (Salesforce/blip2-opt-2.7b vision_config): 40 layers less the last
def _eva_vit_g(image_size: int) -> dict[str, Any]:
    return dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
                image_size=image_size, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True)


# BLIP-2's Q-Former (bert-base-uncased shaped; a cross-attention block every other layer)
QFORMER = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
               cross_attention_frequency=2, encoder_hidden_size=1408, num_query_tokens=32, vocab_size=30523,
               max_position_embeddings=512, embed_dim=256)

# Vicuna-7B v1.1 (lmsys/vicuna-7b-v1.1) and v1.5, Vicuna-13B v0/v1.1, Llama-2-7B: LLaMA shapes
VICUNA_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048, rms_norm_eps=1e-6,
                 hidden_act="silu", tie_word_embeddings=False)
VICUNA_13B = dict(VICUNA_7B, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                  num_key_value_heads=40)
LLAMA2_7B = dict(VICUNA_7B, max_position_embeddings=4096, rms_norm_eps=1e-5)

# OPT-2.7B (facebook/opt-2.7b)
OPT_2_7B = dict(vocab_size=50272, hidden_size=2560, ffn_dim=10240, num_hidden_layers=32, num_attention_heads=32,
                max_position_embeddings=2048, word_embed_proj_dim=2560, do_layer_norm_before=True,
                activation_function="relu", enable_bias=True, tie_word_embeddings=True)

# Flan-T5-XL (google/flan-t5-xl)
FLAN_T5_XL = dict(vocab_size=32128, d_model=2048, d_ff=5120, d_kv=64, num_heads=32, num_layers=24, num_decoder_layers=24,
                  feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, relative_attention_max_distance=128,
                  layer_norm_epsilon=1e-6, tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0,
                  eos_token_id=1, dense_act_fn="gelu")  # exact GELU, as LAVIS and transformers' BLIP-2 conversion load it

# Two learning-rate stages as LLaVA runs them: projector on caption pairs, then projector + LLM
def _llava_stages(pretrain_lr: float, instruct_lr: float, batches=(256, 128)) -> tuple[Stage, ...]:
    return (Stage("pretrain", trainable=("connector",), data="pretrain", lr=pretrain_lr, global_batch_size=batches[0]),
            Stage("instruct", trainable=("connector", "llm"), data="instruct", lr=instruct_lr, global_batch_size=batches[1]))


# BLIP-2: stage 1 trains the Q-Former on a frozen ViT with ITC + ITM + ITG; stage 2 connects it to a
# frozen LLM with the LM loss (Q-Former and projection learn). 1e-4 peak, cosine, 2k warmup steps; AdamW
# with beta2 0.98 and weight decay 0.05 (the paper's section 3.4; LAVIS's pretrain configs: weight_decay 0.05).
BLIP2_STAGES = (
    Stage("representation", trainable=("connector",), data="pretrain", lr=1e-4, objective="itc_itm_itg",
          weight_decay=0.05, betas=(0.9, 0.98), global_batch_size=2320, qformer_text="caption"),
    Stage("generative", trainable=("connector", "projection"), data="pretrain", lr=1e-4, weight_decay=0.05,
          betas=(0.9, 0.98), global_batch_size=1920),
)
# InstructBLIP starts from BLIP-2's weights and instruction-tunes the Q-Former and projection (LLM and ViT frozen)
INSTRUCTBLIP_STAGES = BLIP2_STAGES + (
    Stage("instruct", trainable=("connector", "projection"), data="instruct", lr=1e-5, weight_decay=0.05,
          global_batch_size=192, qformer_text="instruction"),
)


# ---------------------------------------------------------------------------------------------
# The ten architectures, published size
# ---------------------------------------------------------------------------------------------

def _published() -> list[Preset]:
    eva224 = _eva_vit_g(224)
    # BLIP-2's image side, shared by BLIP-2, InstructBLIP and MiniGPT-4: EVA ViT-g at 224 px, the output of its
    # (truncated) last layer after ln_vision, CLS kept, 32 Q-Former queries
    blip2_image = dict(image_size=224, patch_size=14, visual_tokens=32, vision_kind="eva", vision=eva224,
                       vision_feature_layer=-1, vision_post_norm=True, keep_cls=True,
                       connector_config=dict(QFORMER, encoder_hidden_size=eva224["hidden_size"]))
    return [
        Preset(
            name="blip2-opt", architecture="blip2-opt", size="published", chat_format="blip2_opt",
            **blip2_image,
            connector="qformer",
            llm_kind="opt", llm=OPT_2_7B, stages=BLIP2_STAGES,
            sources=("arXiv 2301.12597", "huggingface.co/Salesforce/blip2-opt-2.7b config.json",
                     "salesforce/LAVIS lavis/models/blip2_models/blip2_opt.py"),
        ),
        Preset(
            name="blip2-flant5", architecture="blip2-flant5", size="published", chat_format="blip2_flant5",
            **blip2_image,
            connector="qformer",
            llm_kind="t5", llm=FLAN_T5_XL, stages=BLIP2_STAGES,
            sources=("arXiv 2301.12597", "huggingface.co/Salesforce/blip2-flan-t5-xl config.json",
                     "salesforce/LAVIS lavis/models/blip2_models/blip2_t5.py"),
        ),
        Preset(
            name="instructblip-flant5", architecture="instructblip-flant5", size="published",
            chat_format="instructblip_flant5", **blip2_image,
            connector="instruct_qformer",
            llm_kind="t5", llm=FLAN_T5_XL, stages=INSTRUCTBLIP_STAGES,
            sources=("arXiv 2305.06500", "huggingface.co/Salesforce/instructblip-flan-t5-xl config.json",
                     "salesforce/LAVIS lavis/models/blip2_models/blip2_t5_instruct.py"),
        ),
        Preset(
            name="instructblip-vicuna", architecture="instructblip-vicuna", size="published",
            chat_format="instructblip_vicuna", **blip2_image,
            connector="instruct_qformer",
            llm_kind="llama", llm=dict(VICUNA_7B, vocab_size=32001), stages=INSTRUCTBLIP_STAGES,
            sources=("arXiv 2305.06500", "huggingface.co/Salesforce/instructblip-vicuna-7b config.json",
                     "salesforce/LAVIS lavis/models/blip2_models/blip2_vicuna_instruct.py"),
        ),
        Preset(
            # Qwen-VL: its own ViT (visual.py's VisionTransformer: ViT-bigG/14 shaped, initialised from OpenCLIP's,
            # no CLS token; vlm.qwen_vl_vision) at 448 px, 48 layers of width 1664, mlp width int(1664 * 4.9231);
            # its last layer's output into one cross-attention layer with 256 queries and 2D sin-cos positions,
            # then Qwen-7B (config.json's visual: width 1664, layers 48, heads 16, mlp_ratio 4.9231, patch 14).
            name="qwen-vl", architecture="qwen-vl", size="published", chat_format="qwen_vl_chatml",
            image_size=448, patch_size=14, visual_tokens=256,
            vision_kind="qwen_vl", vision=dict(hidden_size=1664, intermediate_size=8192, num_hidden_layers=48,
                                               num_attention_heads=16, image_size=448, patch_size=14),
            vision_feature_layer=-1,
            connector="resampler", connector_config=dict(num_queries=256, embed_dim=4096, kv_dim=1664, num_heads=32),
            llm_kind="qwen2", llm=dict(vocab_size=151936, hidden_size=4096, intermediate_size=11008,
                                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                                       max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=10000.0,
                                       tie_word_embeddings=False),
            stages=(
                Stage("pretrain", trainable=("vision", "connector"), data="pretrain", lr=2e-4, image_size=224,
                      weight_decay=0.05, global_batch_size=30720),
                Stage("multitask", trainable=("vision", "connector", "llm"), data="multitask", lr=5e-5,
                      weight_decay=0.05, global_batch_size=4096),
                Stage("instruct", trainable=("connector", "llm"), data="instruct", lr=1e-5, weight_decay=0.1,
                      global_batch_size=128),
            ),
            sources=("arXiv 2308.12966", "QwenLM/Qwen-VL visual.py", "huggingface.co/Qwen/Qwen-VL config.json"),
        ),
        Preset(
            # Qwen2-VL-7B: a native-resolution ViT with 2D-RoPE; 2x2 patches merged by an MLP into the LLM
            # width; M-RoPE (temporal, height, width) positions in Qwen2. visual_tokens is for a 448x448 image.
            name="qwen2-vl", architecture="qwen2-vl", size="published", chat_format="qwen2_vl_chatml",
            image_size=448, patch_size=14, visual_tokens=256,
            vision_kind="qwen2_vl", vision=dict(depth=32, embed_dim=1280, hidden_size=3584, mlp_ratio=4, num_heads=16,
                                                in_channels=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
            vision_feature_layer=-1,
            connector="patch_merger", connector_config=dict(spatial_merge_size=2),
            llm_kind="qwen2_vl", llm=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                                          num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                                          max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
                                          rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
                                          tie_word_embeddings=False),
            stages=(
                # arXiv 2409.12191 section 2.2: "In the first stage, we focus exclusively on training the Vision
                # Transformer (ViT) component [...] In the second stage, we unfreeze all parameters [...] In the
                # final stage, we lock the ViT parameters and perform exclusive fine-tuning of the LLM using
                # instructional datasets." The paper never says on which side of that line the 2x2 merger falls
                # (section 2.1 describes it after the ViT as an MLP layer). Loom counts it as part of the ViT in
                # every stage, as the official code does (it is `visual.merger`, inside the ViT module) and as
                # Table 1's 675M ViT does: stage 1 trains it with the ViT, stage 3 locks it with the ViT.
                Stage("vision", trainable=("vision", "connector"), data="pretrain", lr=1e-4),
                Stage("all", trainable=("vision", "connector", "llm"), data="multitask", lr=2e-5),
                Stage("instruct", trainable=("llm",), data="instruct", lr=1e-5),
            ),
            sources=("arXiv 2409.12191", "huggingface.co/Qwen/Qwen2-VL-7B-Instruct config.json"),
        ),
        Preset(
            # LLaVA (NeurIPS 2023): CLIP ViT-L/14 at 224 px, penultimate layer, CLS dropped, one linear layer,
            # Vicuna-13B; stage 1 on CC3M-595K (lr 2e-3), stage 2 on LLaVA-Instruct-158K (lr 2e-5).
            name="llava", architecture="llava", size="published", chat_format="llava_v0",
            image_size=224, patch_size=14, visual_tokens=256,
            vision_kind="clip", vision=_clip_vit_l(224),
            connector="linear", connector_config={},
            llm_kind="llama", llm=VICUNA_13B, stages=_llava_stages(2e-3, 2e-5),
            sources=("arXiv 2304.08485", "haotian-liu/LLaVA llava/model/multimodal_projector/builder.py"),
        ),
        Preset(
            # LLaVA-1.5: ViT-L/14 at 336 px (576 tokens), a 2-layer GELU MLP, Vicuna-7B v1.5. Stage 1 on
            # LCS-558K (lr 1e-3, batch 256); stage 2 on the 665K mix (lr 2e-5, batch 128). Both one epoch,
            # cosine, 3% warmup, no weight decay; the vision tower stays frozen.
            name="llava-1.5", architecture="llava-1.5", size="published", chat_format="llava_v1",
            image_size=336, patch_size=14, visual_tokens=576,
            vision_kind="clip", vision=_clip_vit_l(336),
            connector="mlp2x_gelu", connector_config={},
            llm_kind="llama", llm=dict(VICUNA_7B, max_position_embeddings=4096, rms_norm_eps=1e-5),
            stages=_llava_stages(1e-3, 2e-5),
            sources=("arXiv 2310.03744", "huggingface.co/llava-hf/llava-1.5-7b-hf config.json"),
        ),
        Preset(
            # MiniGPT-4: BLIP-2's EVA ViT-g and Q-Former, both frozen, one linear layer into Vicuna-13B.
            # Stage 1 on caption pairs, stage 2 on 3,500 curated descriptions: only the linear layer learns.
            name="minigpt4", architecture="minigpt4", size="published", chat_format="minigpt4",
            **blip2_image,
            connector="qformer_linear",
            llm_kind="llama", llm=VICUNA_13B,
            stages=(Stage("pretrain", trainable=("projection",), data="pretrain", lr=1e-4, global_batch_size=256),
                    Stage("instruct", trainable=("projection",), data="instruct", lr=3e-5, global_batch_size=12)),
            sources=("arXiv 2304.10592", "Vision-CAIR/MiniGPT-4 minigpt4/models/mini_gpt4.py"),
        ),
        Preset(
            # MiniGPT-v2: EVA ViT-g at 448 px (1024 patches, CLS dropped), every 4 adjacent tokens concatenated
            # (256 tokens of 4 x 1408) and projected into Llama-2-7B-chat; three stages, each training the
            # projection and the LLM through LoRA (MINIGPT_V2_LORA: the LLM's own weights stay frozen).
            name="minigpt-v2", architecture="minigpt-v2", size="published", chat_format="minigpt_v2",
            image_size=448, patch_size=14, visual_tokens=256,
            vision_kind="eva", vision=_eva_vit_g(448), vision_feature_layer=-1, vision_post_norm=True,
            connector="token_concat", connector_config=dict(group=4),
            llm_kind="llama", llm=LLAMA2_7B,
            stages=(Stage("pretrain", trainable=("connector", "llm"), data="pretrain", lr=1e-4, lora=MINIGPT_V2_LORA),
                    Stage("multitask", trainable=("connector", "llm"), data="multitask", lr=1e-5, lora=MINIGPT_V2_LORA),
                    Stage("instruct", trainable=("connector", "llm"), data="instruct", lr=1e-5, lora=MINIGPT_V2_LORA)),
            sources=("arXiv 2310.09478", "Vision-CAIR/MiniGPT-4 minigpt4/models/minigpt_v2.py",
                     "Vision-CAIR/MiniGPT-4 minigpt4/models/base_model.py (init_llm: the LoRA)"),
        ),
    ]


# ---------------------------------------------------------------------------------------------
# Tiny sizes: the same architectures, small enough to build, train and compare in a CPU test
# ---------------------------------------------------------------------------------------------

TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                 patch_size=8, projection_dim=32, hidden_act="quick_gelu", layer_norm_eps=1e-5)
TINY_QWEN_VL_VIT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                        patch_size=8)
TINY_EVA = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                patch_size=8, hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True)
# Each tiny part is its published part with small widths, so it keeps every other setting.
TINY_QFORMER = dict(QFORMER, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                    encoder_hidden_size=32, num_query_tokens=8, vocab_size=512, max_position_embeddings=64, embed_dim=16,
                    dec_token_id=511)  # [DEC], after the 400 tokens a tokenizer trained on the corpus holds
TINY_LLAMA = dict(LLAMA2_7B, vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048)
TINY_OPT = dict(OPT_2_7B, vocab_size=256, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                word_embed_proj_dim=64)
TINY_T5 = dict(FLAN_T5_XL, vocab_size=256, d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2, num_decoder_layers=2)
TINY_QWEN2 = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-6, rope_theta=10000.0,
                  bos_token_id=None, eos_token_id=None,
                  tie_word_embeddings=False)

# Tiny stage lists keep the paper's stages and groups; learning rates are higher, as a randomly
# initialised tiny model has nothing to forget.
def _tiny_stages(stages: tuple[Stage, ...]) -> tuple[Stage, ...]:
    return tuple(dataclasses.replace(s, lr=min(s.lr * 10, 2e-3), global_batch_size=None, image_size=None)
                 for s in stages)


def _tiny(preset: Preset) -> Preset:
    kind = preset.vision_kind
    vision = {"clip": TINY_CLIP, "eva": TINY_EVA, "qwen_vl": TINY_QWEN_VL_VIT}.get(kind)
    image_size, patch_size = 32, 8
    if kind == "qwen2_vl":
        vision = dict(depth=2, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=4, in_channels=3, patch_size=8,
                      spatial_merge_size=2, temporal_patch_size=2)
    patches = (image_size // patch_size) ** 2
    connector_config = dict(preset.connector_config)
    if preset.has_qformer:
        connector_config = dict(TINY_QFORMER)
        visual_tokens = TINY_QFORMER["num_query_tokens"]
    elif preset.connector == "resampler":
        connector_config = dict(num_queries=16, embed_dim=64, kv_dim=32, num_heads=4)
        visual_tokens = 16
    elif preset.connector in ("token_concat", "patch_merger"):
        visual_tokens = patches // 4
    else:
        visual_tokens = patches + (1 if preset.keep_cls else 0)
    llm = {"llama": TINY_LLAMA, "opt": TINY_OPT, "t5": TINY_T5, "qwen2": TINY_QWEN2,
           "qwen2_vl": dict(TINY_QWEN2, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})}[preset.llm_kind]
    return dataclasses.replace(
        preset, name=f"{preset.architecture}-tiny", size="tiny", image_size=image_size, patch_size=patch_size,
        visual_tokens=visual_tokens, vision=dict(vision, **({"image_size": image_size} if not preset.native_resolution else {})),
        connector_config=connector_config, llm=dict(llm), stages=_tiny_stages(preset.stages))


# The tiny LLaVA-1.5 the quickstart trains: bigger than the other tiny presets (64 px images, a 4-layer
# LLM) so that two short CPU stages learn the shapes world's questions.
LLAVA_15_TINY_QUICKSTART = dict(
    image_size=64, patch_size=8, visual_tokens=64,
    vision=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4, image_size=64,
                patch_size=8, projection_dim=64, hidden_act="quick_gelu", layer_norm_eps=1e-5),
    llm=dict(vocab_size=512, hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5, hidden_act="silu",
             tie_word_embeddings=False),
    stages=(Stage("pretrain", trainable=("connector",), data="pretrain", lr=2e-3, epochs=1, warmup_ratio=0.03),
            Stage("instruct", trainable=("connector", "llm"), data="instruct", lr=1e-3, epochs=1, warmup_ratio=0.03)),
)


def _registry() -> dict[str, Preset]:
    presets = {}
    for preset in _published():
        tiny = _tiny(preset)
        if preset.name == "llava-1.5":
            tiny = dataclasses.replace(tiny, **LLAVA_15_TINY_QUICKSTART)
        presets[preset.name] = preset
        presets[tiny.name] = tiny
    return presets


PRESETS: dict[str, Preset] = _registry()
ARCHITECTURES: tuple[str, ...] = tuple(p.name for p in PRESETS.values() if p.size == "published")


def presets() -> list[str]:
    """The ten architectures' names (each also comes at size="tiny")."""
    return list(ARCHITECTURES)


def get_preset(name: str, size: str | None = None) -> Preset:
    """The preset `name` (at `size`, when given: "published" or "tiny")."""
    key = name if size in (None, "published") or name.endswith("-tiny") else f"{name}-{size}"
    if size is not None and size not in SIZES:
        raise ValueError(f"size {size!r}; expected one of {list(SIZES)}")
    try:
        return PRESETS[key]
    except KeyError:
        raise KeyError(f"unknown preset {key!r}; known presets: {', '.join(ARCHITECTURES)} "
                       f"(each also at size='tiny', e.g. '{ARCHITECTURES[0]}-tiny')") from None


def stages(name: str) -> list[Stage]:
    """The training stages of preset `name`, in the order they run."""
    return list(get_preset(name).stages)
