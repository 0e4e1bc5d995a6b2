"""The run config's schema: one pydantic model per section, holding every key's type, range and default.

Each job reads its section through `section_settings` (the section merged over these defaults); `loom`
checks the whole file with `check_config` before any work, and `loom config schema` prints `json_schema`
for editors. What needs files, cards, templates or a preset (a card's adapter, a stage name) stays in
the job that reads it, checked before it starts.

A key whose value is wrong is reported as one line (jobs/config_problems.py), its expected part written
from the key's JSON Schema: a range is stated once, here.
"""
from __future__ import annotations

import ipaddress
import math
import re
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_serializer, model_validator)

from jobs.config_problems import KeyedError, problems
from pipelines.ingest.dedup import MAX_RADIUS
from pipelines.ingest.download import DownloadConfig
from pipelines.ingest.filters import FilterConfig
from pipelines.ingest.partitioned_dedup import SEARCHES
from pipelines.ingest.sources import FORMATS
from pipelines.mixture import WEIGHTINGS
from pipelines.qformer_text import QFORMER_TEXTS
from pipelines.shapes_world.export import (DEFAULT_PAIR_SCENES, DEFAULT_TRAIN_SCENES, DEFAULT_VAL_SCENES,
                                           TRAIN_FIRST_IMAGE_ID, VAL_FIRST_IMAGE_ID)
from vlm.preset import GROUPS, OBJECTIVES

RESIZE_MODES = ("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border")  # img2dataset's
RAY_CHOICES = ("auto", "always", "never")
PACK_MODES = ("block", "interleave_same_task")
SHARE_TOLERANCE = 1e-6  # language shares must add up to 1 within this, unless normalise_languages is set

# The numbers a config gives: whole numbers are never true/false, text or 2.5; numbers are never text
Seed = Annotated[int, Field(ge=0, description="seed of every random choice the stage makes")]
Count = Annotated[int, Field(ge=1)]
Share = Annotated[float, Field(ge=0, le=1)]
Names = Annotated[list[str], Field(min_length=1)]


class SchemaError(ValueError):
    """A config the schema refuses; `problems` holds one line per key at fault."""

    def __init__(self, problems: list[str]):
        super().__init__(problems[0])
        self.problems = problems


class Settings(BaseModel):
    """A mapping of known keys with strict types; an unknown key is refused with the known ones."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Overrides(Settings):
    """Settings whose keys left out stay out when the section is read: the reader has its own defaults (a
    card's column names, a preset's learning rate), which these must not shadow."""

    @model_serializer(mode="wrap")
    def _given_keys_only(self, handler):
        given = self.model_fields_set | set(self.model_extra or {})
        return {key: value for key, value in handler(self).items() if key in given}


def _some(what: str) -> AfterValidator:
    """Refuses an empty list or mapping, saying what it should hold."""
    def check(value):
        if not value:
            raise ValueError(f"empty; expected {what}")
        return value

    return AfterValidator(check)


def _ordered_pair(pair: list) -> list:
    if pair[0] > pair[1]:
        raise ValueError(f"{pair}: the least is above the most; expected [least, most], e.g. [{pair[1]}, {pair[0]}]")
    return pair


# ---------------------------------------------------------------------------------------------
# demo_data
# ---------------------------------------------------------------------------------------------

class DemoData(Settings):
    """The synthetic shapes world written (or reused) before ingest."""

    seed: Seed = 0
    pair_scenes: int = Field(DEFAULT_PAIR_SCENES, ge=0, description="scenes behind the URL list's image-text pairs")
    train_scenes: int = Field(DEFAULT_TRAIN_SCENES, ge=0, lt=VAL_FIRST_IMAGE_ID - TRAIN_FIRST_IMAGE_ID,
                              description="scenes of the COCO Captions / VQAv2-format train split")
    val_scenes: int = Field(DEFAULT_VAL_SCENES, ge=0, description="scenes of the held-out split, for evaluation")
    port: int | None = Field(None, ge=1, le=65_535, description="loopback port the URL list points at; null: a free one")
    out: str | None = Field(None, description="folder of the shapes world; null: {out}/demo")
    messy: bool = Field(False, description="also plant the malformed URLs, junk captions and misbehaving servers "
                                           "a real crawl meets")


# ---------------------------------------------------------------------------------------------
# ingest
# ---------------------------------------------------------------------------------------------

class SourceEntry(Overrides):
    """One URL list: {path, url_col, caption_col}, or {card: NAME, path: GLOB} read by the card's layout."""

    path: str = Field(None, description="a URL list file: local, an fsspec URL, or with card a glob")
    card: str = Field(None, description="a caption-pair card, as `loom catalog list --kind pairs` lists them")
    layout: str = Field(None, description="with card: one of the card's layouts; default: its own")
    url_col: str = Field(None, description="the URL column; default url, or the card's")
    caption_col: str = Field(None, description="the caption column; default caption, or the card's")
    name: str = Field(None, description="what the rows' ids start with; default: the file's stem, or the card")
    format: Literal[FORMATS] = Field(None, description="the file format; default parquet, or the card's")
    columns: Names = Field(None, description="the column names of a headerless csv or tsv, in file order")

    @model_validator(mode="after")
    def _names_a_list(self):
        if self.path is None and self.card is None:
            raise ValueError("names no URL list; expected {path: ..., url_col: url, caption_col: caption} or "
                             "{card: NAME, path: ...} (`loom catalog list --kind pairs` lists the cards)")
        return self


CaptionLength = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=2, max_length=2)]


class Filters(Overrides):
    """Per-sample filter thresholds over FilterConfig's defaults (the languages are ingest.languages')."""

    min_side: int = Field(FilterConfig.min_side, ge=0, description="pixels of an original image's shorter side, at least")
    max_aspect_ratio: float = Field(FilterConfig.max_aspect_ratio, ge=1, description="long side over short side, at most")
    caption_words: CaptionLength = Field(list(FilterConfig.caption_words),
                                         description="[least, most] words of a caption in a space-separated language")
    caption_chars_zh: CaptionLength = Field(list(FilterConfig.caption_chars_zh),
                                            description="[least, most] characters of a Chinese caption")
    max_repeat_share: float = Field(FilterConfig.max_repeat_share, gt=0, le=1,
                                    description="share of a caption one token may make up before it is junk")
    foreign_min_confidence: Share = Field(FilterConfig.foreign_min_confidence,
                                          description="confidence a language outside the mix needs to drop a caption")
    uncertain_min_confidence: Share = Field(FilterConfig.uncertain_min_confidence,
                                            description="support an uncertain caption's most probable mixed language needs")
    near_duplicate_radius: int = Field(FilterConfig.near_duplicate_radius, ge=0, le=MAX_RADIUS,
                                       description="Hamming bits of the 256-bit perceptual hash; 0: identical only")
    near_duplicate_search: Literal[SEARCHES] = Field(
        FilterConfig.near_duplicate_search,
        description="exact: every pair within the radius; lsh: sampled bit tables; auto: exact while affordable")
    near_duplicate_recall: float = Field(FilterConfig.near_duplicate_recall, gt=0, lt=1,
                                         description="share of near pairs lsh finds, e.g. 0.99")

    _ordered = field_validator("caption_words", "caption_chars_zh")(_ordered_pair)


class Ingest(Settings):
    """`loom ingest`: URL lists → pairs shards."""

    sources: Annotated[list[SourceEntry], _some(
        "at least one URL list, e.g. [{path: urls.parquet, url_col: url, caption_col: caption}] or "
        "[{card: cc3m, path: /data/cc3m/*.tsv}]")] = Field([], validate_default=True, description="the URL lists to read")
    serve: str | None = Field(None, description="a shapes-world folder served over loopback while the job runs: the demo")
    image_size: int = Field(224, ge=1, le=65_536, description="pixels of the resized images' side")
    resize_mode: Literal[RESIZE_MODES] = Field("keep_ratio", description="img2dataset's resize mode")
    encode_quality: int = Field(90, ge=1, le=100, description="JPEG quality of the resized images")
    languages: dict[str, Annotated[float, Field(gt=0)]] = Field(
        {"en": 0.773, "zh": 0.227}, min_length=1,
        description="language code: share of the kept pairs; the shares add up to 1")
    normalise_languages: bool = Field(False, description="true: shares that do not add up to 1 are rescaled, "
                                                         "not refused")
    filters: Filters = Field(Filters(), description="per-sample filter thresholds")
    allow_private_network: bool = Field(False, description="fetch loopback, private and link-local addresses too")
    allowed_networks: list[str] = Field([], description="CIDRs fetched even though private, e.g. an internal mirror")
    max_bytes: int = Field(32 * 2**20, ge=1, le=2**40, description="bytes of one image body")
    max_pixels: int = Field(89_478_485, ge=1, le=2**40,
                            description="pixels an image header may claim, checked before decoding: bombs are refused")
    max_seconds: float = Field(60.0, gt=0, description="seconds of a whole fetch: connect, headers, body and "
                                                       "every redirect, however slowly a server sends")
    robots_directives: list[Annotated[str, Field(pattern=r"\S")]] = Field(
        list(DownloadConfig.disallowed_header_directives),
        description="X-Robots-Tag directives by which a publisher opts an image out; [] fetches regardless")
    seed: Seed = 0
    samples_per_shard: int = Field(1000, ge=1, le=10_000_000, description="kept pairs per output shard")
    download_shard_size: int = Field(1000, ge=1, le=10_000_000, description="URL rows per download shard")
    threads: int = Field(32, ge=1, le=4_096, description="download threads per shard")
    timeout: float = Field(10, gt=0, description="seconds without a byte before a fetch gives up")
    retries: int = Field(1, ge=0, le=100, description="extra tries of a failed URL")
    max_shard_attempts: int = Field(3, ge=1, description="tries of a download shard whose task dies before it is "
                                                         "quarantined, its rows dropped as shard_failed")
    partitions: int | None = Field(None, ge=1, le=65_536, description="hash partitions of the decision phase; "
                                                                      "null: one per million rows, at least 2")

    @field_validator("allowed_networks")
    @classmethod
    def _cidrs(cls, networks: list[str]) -> list[str]:
        for network in networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as err:
                raise ValueError(f"{network!r} is not a network ({err}); expected CIDRs like 10.0.0.0/8") from err
        return networks

    @model_validator(mode="after")
    def _shares_add_up(self):
        total = math.fsum(self.languages.values())
        if not self.normalise_languages and abs(total - 1) > SHARE_TOLERANCE:
            raise KeyedError("languages", f"{self.languages}: the shares add up to {total:g}, not 1; expected shares "
                                          "adding up to 1, or ingest.normalise_languages: true to have them rescaled")
        return self


# ---------------------------------------------------------------------------------------------
# render
# ---------------------------------------------------------------------------------------------

class DatasetEntry(Overrides):
    """One dataset to render: {card: NAME, ...its adapter's arguments} or {adapter: pairs|coco_captions|vqav2|
    generic, ...}; the keys an adapter reads are checked against it by the render job."""

    model_config = ConfigDict(extra="allow")

    card: str = Field(None, description="a dataset card, as `loom catalog list --kind dataset` lists them")
    adapter: str = Field(None, description="a built-in reader: pairs, coco_captions, vqav2 or generic")
    split: str = Field(None, description="the split its records belong to; default train")
    limit: int | None = Field(None, ge=0, description="records read at most; 0 or null: all")
    template: str | None = Field(None, description="one template id every record renders through")
    lang: str = Field(None, description="the language of the file's text; default: the card's")

    @model_validator(mode="after")
    def _names_a_reader(self):
        if self.card is None and self.adapter is None:
            raise ValueError("names no reader; expected {card: NAME, ...} or {adapter: pairs, path: ...}")
        return self


class Mixture(Settings):
    """InstructBLIP's training mixture over the render entries of split train."""

    weighting: Literal[WEIGHTINGS] = Field("sqrt", description="how dataset sizes become shares")
    adjustments: dict[str, Annotated[float, Field(ge=0)]] | None = Field(
        None, description="dataset: factor on its share, e.g. {okvqa: 2.0, aokvqa: 0.5}")
    total: Count | None = Field(None, description="records drawn in all; null: the datasets' sizes added up")


class Render(Settings):
    """`loom render`: pairs and native annotation files → instruction records."""

    seed: Seed = 0
    datasets: Annotated[list[DatasetEntry], _some(
        "the datasets to render, e.g. [{adapter: pairs, path: '{out}/ingest'}] or [{card: vizwiz, annotation_file: "
        "..., image_root: ...}]")] = Field([], validate_default=True, description="the datasets to render")
    mixture: Mixture | None = Field(None, description="reweight the training entries as InstructBLIP mixes them")
    part_records: Count = Field(100_000, description="records of one output file, and the most pairs one task holds")
    ray: Literal[RAY_CHOICES] = Field("auto", description="auto: on Ray when a cluster is named or the input is big "
                                                          "enough to share out")
    template_set: str = Field("default", description="default: Loom's own templates; instructblip_paper: "
                                                     "InstructBLIP's Table 5 where it covers the task")
    brevity: dict[str, Any] = Field({}, description="dataset name: its share of brevity-worded prompts, a number "
                                                   "for short or {short, long}; an entry's own brevity wins; default: "
                                                   "the paper's share for a short-answer card, else 0")
    template_paths: list[Annotated[str, Field(min_length=1)]] = Field(
        [], description="the older name of templates.paths, still read")
    catalog_paths: list[Annotated[str, Field(min_length=1)]] = Field(
        [], description="the older name of catalog.paths, still read")


# ---------------------------------------------------------------------------------------------
# pack
# ---------------------------------------------------------------------------------------------

class TokenizerTraining(Settings):
    """A byte-level BPE trained here, on a hash sample of the render output (the whole of a smaller one)."""

    vocab_size: Count = Field(description="tokens of the trained vocabulary")
    sample: Count = Field(200_000, description="records the tokenizer trains on at most")


class Tokenizer(Overrides):
    """Either {path: DIR} (a Hugging Face tokenizer folder) or {train: {vocab_size: N}}."""

    path: str = Field(None, description="a local Hugging Face tokenizer folder")
    train: TokenizerTraining = Field(None, description="train a byte-level BPE on the render output")

    @model_validator(mode="after")
    def _one_way(self):
        if (self.path is None) == (self.train is None):
            given = "gives both path and train" if self.path is not None else "gives neither path nor train"
            raise ValueError(f"{given}; expected either {{path: DIR}} or {{train: {{vocab_size: N}}}}")
        return self


class PackOutput(Overrides):
    """One packed output: which records it takes, and optionally their weights."""

    datasets: Names = Field(description="prefixes of the records' dataset names, e.g. [vqav2, coco_caption]")
    split: str = Field(None, description="the split it takes; default train")
    weights: dict[str, Annotated[float, Field(ge=0)]] = Field(
        None, description="dataset prefix: records drawn per record on average; 2 doubles, 0.25 keeps a quarter")
    qformer_text: Literal[QFORMER_TEXTS] | None = Field(
        None, description="what a Q-Former reads with this output's images; default: what its stages say")

    @model_validator(mode="after")
    def _weights_of_its_datasets(self):
        strays = [prefix for prefix in self.weights or {} if prefix not in self.datasets]
        if strays:
            raise KeyedError("weights", f"{strays} are not among its datasets {self.datasets}; expected weights of "
                                        "the prefixes the output lists")
        return self


class Pack(Settings):
    """`loom pack`: instruction records → tokenized, packed sequences for one architecture."""

    input: str | None = Field(None, description="the render output folder; null: {out}/render")
    preset: str = Field("llava-1.5", description="the architecture preset, e.g. llava-1.5 or blip2-opt-tiny")
    seq_len: int = Field(2048, ge=64, description="tokens of a packed sequence")
    tokenizer: Tokenizer = Field(Tokenizer(train=TokenizerTraining(vocab_size=2000)), description="the LLM's tokenizer")
    loss_on: Literal["assistant", "all"] = Field("assistant", description="the tokens trained on")
    sequences_per_shard: Count = Field(1000, description="packed sequences per output file")
    mode: Literal[PACK_MODES] = Field("block", description="block: samples isolated, attention and positions "
                                                           "restart per sample; interleave_same_task: samples of one "
                                                           "task share a sequence as one document, Qwen-VL's stage 2")
    max_images_per_sequence: Count | None = Field(None, description="a cap for the vision tower's memory; null: none")
    window: Count = Field(1_000_000, description="samples packed together at most: one task reads, packs and writes "
                                                 "a window, so memory stays flat on any corpus size")
    too_long: Literal["drop", "split"] = Field("drop", description="split cuts a text-only sample into sequences; a "
                                                                   "sample with images is never cut")
    ray: Literal[RAY_CHOICES] = Field("auto", description="auto: on Ray when a cluster is named or there is more "
                                                          "than one window")
    qformer_tokenizer: Tokenizer = Field(Tokenizer(train=TokenizerTraining(vocab_size=400)),
                                         description="the BERT tokenizer InstructBLIP's Q-Former reads instructions "
                                                     "in: {path: DIR}, e.g. Salesforce/instructblip-*'s "
                                                     "qformer_tokenizer folder, or one trained here")
    outputs: Annotated[dict[str, PackOutput], _some(
        "at least one packed output, e.g. {instruct: {datasets: [vqav2], split: train}}")] = Field(
        {}, validate_default=True, description="output name: {datasets: [prefixes], split: train}")


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------

DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


class StageOverrides(Overrides):
    """A preset stage's values this run changes; the others stay the paper's."""

    lr: float = Field(None, gt=0, description="peak learning rate")
    epochs: Count = Field(None, description="passes over the stage's data")
    max_steps: Count = Field(None, description="optimizer steps; overrides epochs")
    warmup_ratio: float = Field(None, ge=0, lt=1, description="share of the steps spent warming up")
    weight_decay: float = Field(None, ge=0, description="AdamW's weight decay")
    betas: list[Annotated[float, Field(ge=0, lt=1)]] = Field(None, min_length=2, max_length=2,
                                                             description="AdamW's [beta1, beta2]")
    data: str = Field(None, description="the pack output the stage reads")
    trainable: list[Literal[GROUPS]] = Field(None, min_length=1, description="the groups that learn")
    objective: Literal[OBJECTIVES] = Field(None, description="lm, or BLIP-2's stage-1 losses itc_itm_itg")
    image_size: Count = Field(None, description="pixels of the stage's images; fixed-token connectors only")
    lora: Any = Field(None, description="true: the stage's own LoRA, else MiniGPT-v2's on the LLM; false: train "
                                        "the group whole; or {rank, alpha, dropout, targets, group} over that default")


class Tower(Settings):
    """`loom tower`: pairs → a preset's vision tower pretrained with CLIP's loss, for train.init.vision."""

    input: str | None = Field(None, description="the ingest output folder; null: {out}/ingest")
    preset: str | None = Field(None, description="the preset whose tower is pretrained; null: pack.preset")
    seed: Seed = 0
    epochs: Count = Field(20, description="passes over the training pairs")
    max_steps: Count | None = Field(None, description="optimizer steps; overrides epochs")
    batch_size: int = Field(64, ge=2, description="pairs per step; an image's negatives are its batch's other captions")
    lr: float = Field(2e-3, gt=0, description="peak learning rate (AdamW, linear warmup, then cosine)")
    warmup_ratio: Share = Field(0.1, description="share of the steps spent warming up")
    weight_decay: float = Field(0.1, ge=0, description="AdamW's weight decay on weight matrices")
    held_out: int = Field(64, ge=0, description="pairs kept out of training to score image-caption retrieval")
    vocab_size: int = Field(1000, ge=262, description="tokens of the caption tokenizer trained on the pairs "
                                                      "(a byte-level BPE: 256 bytes and 6 special tokens at least)")
    text_layers: Count = Field(2, description="layers of the CLIP text encoder trained beside the tower")
    image_size: Count | None = Field(None, description="pixels of the training images' side; null: the preset's")


class LanguageModel(Settings):
    """`loom lm`: the render's text → a preset's LLM pretrained to answer from a scene described in its prompt,
    for train.init.llm."""

    input: str | None = Field(None, description="the render output folder; null: {out}/render")
    pack: str | None = Field(None, description="the pack output whose tokenizer and preset the LLM takes; "
                                               "null: {out}/pack")
    datasets: Names = Field(["coco_caption", "vqav2"], description="prefixes of the datasets whose records it "
                                                                   "reads, captions among them")
    split: str = Field("train", description="the split it reads")
    seed: Seed = 0
    epochs: Count = Field(8, description="passes over the text")
    max_steps: Count | None = Field(None, description="optimizer steps; overrides epochs")
    lr: float = Field(1e-3, gt=0, description="peak learning rate (AdamW, linear warmup, then cosine)")
    batch_size: Count = Field(4, description="packed sequences per step")
    seq_len: int = Field(512, ge=64, description="tokens of a packed text sequence")
    plain_captions: bool = Field(True, description="also each caption alone, with no image and no description")
    shapes_world_scenes: int = Field(0, ge=0, description="text-only shapes-world scenes (captions and questions, "
                                                          "no image drawn) added to the render's text: a corpus "
                                                          "big enough to learn reading a scene from context")
    held_out: int = Field(32, ge=0, description="images whose questions are kept out of training and answered "
                                                "from their description, and blind")


class Init(Overrides):
    """Pretrained weights the first stage starts from."""

    model: str = Field(None, description="a Loom or official checkpoint folder of the whole model")
    llm: str = Field(None, description="a transformers checkpoint folder of the preset's LLM")
    vision: str = Field(None, description="a transformers checkpoint folder of the preset's vision tower")


class CaptionEvaluation(Settings):
    """Held-out captions scored by CIDEr-D."""

    datasets: Names = Field(["coco_caption"], description="datasets whose captions are scored")
    split: str = Field("val", description="the held-out split")
    limit: Count | None = Field(None, description="images scored at most; null: all")
    max_new_tokens: Count = Field(20, description="tokens generated per caption at most")
    batch_size: Count = Field(32, description="images per generation batch")


class Evaluation(Settings):
    """Held-out VQA accuracy after every stage (and captions, when asked)."""

    datasets: Names = Field(["vqav2"], description="datasets whose questions are scored")
    split: str = Field("val", description="the held-out split")
    max_new_tokens: Count = Field(8, description="tokens generated per answer at most")
    batch_size: Count = Field(32, description="questions per generation batch")
    limit: Count | None = Field(None, description="questions scored at most; null: all")
    captions: CaptionEvaluation | None = Field(None, description="also score held-out captions by CIDEr-D")
    examples: int = Field(12, ge=0, description="predictions shown in the report")


class Train(Settings):
    """`loom train`: packed sequences → a model trained through its preset's stages, then evaluated."""

    input: str | None = Field(None, description="the pack output folder; null: {out}/pack")
    seed: Seed = 0
    batch_size: Count = Field(1, description="packed sequences per micro-batch")
    grad_accum: Count = Field(1, description="micro-batches per optimizer step")
    checkpoint_every: int = Field(0, ge=0, description="steps between checkpoints; 0: only at the end")
    max_grad_norm: float = Field(1.0, gt=0, description="gradients are clipped to this norm")
    activation_checkpointing: bool = Field(False, description="recompute layer activations in backward: less "
                                                              "memory, ~30% more compute")
    compile: bool = Field(False, description="torch.compile the vision tower and the LLM's decoder")
    device: str | None = Field(None, json_schema_extra={"pattern": f"^({DEVICE.pattern})$"},
                               description="auto or null: cuda when available, else cpu; or cpu, cuda, cuda:N, mps")
    threads: Count | None = Field(None, le=4_096, description="torch's CPU threads in each training process; null: "
                                                              "OMP_NUM_THREADS when set, else the cores this process "
                                                              "may use (its CPU affinity and cgroup quota)")
    log_every: Count = Field(10, description="optimizer steps between progress lines (step, loss, lr, tokens/s), "
                                             "printed where stderr is no terminal (a terminal shows a bar) and "
                                             "always written to train/<stage>/train.log")
    attention: str = Field("auto", description="auto: segment_sdpa, exact attention inside each packed sample, or "
                                               "sdpa for FlanT5 (T5's position bias lives inside attention); or sdpa, "
                                               "eager, flex_attention, segment_sdpa, flash_attention_2")
    stages: dict[str, StageOverrides | None] = Field({}, description="stage name: the preset's values this run "
                                                                     "changes")
    init: Init = Field(Init(), description="pretrained weights: {model: DIR} and/or {llm: DIR, vision: DIR}")
    workers: Count = Field(1, description="Ray Train workers; the global batch is workers x batch_size x grad_accum")
    strategy: str = Field("ddp", description="ddp: a whole model per worker; fsdp: parameters, gradients and "
                                             "optimizer state sharded across the workers (FSDP2), for an LLM that "
                                             "does not fit one GPU")
    evaluate: Evaluation = Field(Evaluation(), description="held-out evaluation after every stage")
    image_roots: dict[str, str] = Field({}, description="root name: folder; re-points a dataset's image folder the "
                                                        "render manifest names (image_roots) after the dataset moved")

    @field_validator("device")
    @classmethod
    def _auto_is_the_default(cls, device: str | None) -> str | None:
        if device is not None and not DEVICE.fullmatch(device):
            raise ValueError(f"{device!r} is not a device; expected auto, cpu, cuda, cuda:N or mps")
        return None if device == "auto" else device


# ---------------------------------------------------------------------------------------------
# templates, catalog: your own folders, read by every command (jobs/user_folders.py)
# ---------------------------------------------------------------------------------------------

Folders = list[Annotated[str, Field(min_length=1)]]


class Templates(Settings):
    """Your own instruction templates, read alongside Loom's by render, `loom templates` and their checks."""

    paths: Folders = Field([], description="folders of task files, TASK.yaml each in the format of templates/tasks/: "
                                           "a task's templates in your wording or language")


class Catalog(Settings):
    """Your own cards, read alongside Loom's by render, ingest and `loom catalog`."""

    paths: Folders = Field([], description="folders of cards, NAME.yaml each in the format of catalog/cards/: a "
                                           "dataset card names the adapter render reads it with, a pairs card the "
                                           "columns ingest reads its URL lists by")


# ---------------------------------------------------------------------------------------------
# The whole file
# ---------------------------------------------------------------------------------------------

class RunConfig(Settings):
    """A Loom run: the sections of the stages it runs, in any subset."""

    model_config = ConfigDict(title="Loom run config")

    demo_data: DemoData | None = None
    ingest: Ingest | None = None
    tower: Tower | None = None
    render: Render | None = None
    pack: Pack | None = None
    lm: LanguageModel | None = None
    train: Train | None = None
    templates: Templates | None = None
    catalog: Catalog | None = None

    @model_validator(mode="before")
    @classmethod
    def _sections(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        if "evaluate" in raw:
            raise KeyedError("evaluate", "not a section of its own; expected under train:, as train.evaluate")
        # a section given with nothing under it (`ingest:`) is the section with its defaults
        return {name: {} if value is None and name in cls.model_fields else value for name, value in raw.items()}

    @model_validator(mode="after")
    def _folders_named_once(self):
        for kind, older in (("templates", "template_paths"), ("catalog", "catalog_paths")):
            top, render = getattr(self, kind), self.render
            if top is None or render is None or older not in render.model_fields_set:
                continue
            if "paths" in top.model_fields_set and getattr(render, older) != top.paths:
                raise KeyedError(f"render.{older}", f"{getattr(render, older)} differs from {kind}.paths {top.paths}; "
                                                    f"expected the folders once, as {kind}.paths (render.{older} is "
                                                    "its older name)")
        return self


SECTIONS = tuple(RunConfig.model_fields)
MODELS: dict[str, type[Settings]] = {name: RunConfig.model_fields[name].annotation.__args__[0] for name in SECTIONS}


def section_settings(name: str, given: Any) -> dict:
    """A section's settings: what the config gives, checked, over the schema's defaults."""
    try:
        return MODELS[name].model_validate({} if given is None else given).model_dump()
    except ValidationError as err:
        raise SchemaError(problems(err, json_schema(), (name,))) from None


def check_config(raw: dict) -> None:
    """Check every section a config gives; SchemaError names each key at fault."""
    try:
        RunConfig.model_validate(raw)
    except ValidationError as err:
        raise SchemaError(problems(err, json_schema())) from None


def json_schema() -> dict:
    """The JSON Schema of a run config (draft 2020-12), for editors and other tools."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **RunConfig.model_json_schema()}
