"""A trained checkpoint as a folder other tools load as it is: transformers' own classes, or Loom's format.

`loom export RUN_OR_CHECKPOINT --to hf OUT` calls `export`. For the architectures transformers has a class for
(LLaVA-1.5, BLIP-2 with OPT or FlanT5, InstructBLIP with Vicuna or FlanT5, Qwen2-VL), OUT holds what
`AutoProcessor.from_pretrained(OUT)`, `AutoModelForImageTextToText.from_pretrained(OUT)` and
`pipeline("image-text-to-text", model=OUT)` need to answer as Loom's own evaluation answers, greedy:

- weights and config (`vlm.convert`), with image_seq_length, the image token and the tokenizer's bos, eos
  and pad ids; generation_config.json stops where Loom's evaluation stops (the first token of the chat
  format's end of turn) and never emits the image placeholder, as `vlm.generate` masks it;
- the tokenizer the pack stage trained, as a PreTrainedTokenizerFast that adds no token of its own: the chat
  template writes every special token, as Loom's encoder does;
- a chat template that lays conversations out in the preset's chat format (`ChatFormat.jinja`);
- an image processor that prepares pixels as `vlm.images` does: padded to a square with the mean colour
  (LLaVA-1.5's expand2square), resized bicubic to the resolution the last stage trained at, normalised
  (LlavaImageProcessor with do_pad, for BLIP-2 and InstructBLIP too: their BlipImageProcessor cannot pad);
  for Qwen2-VL its own resize rule at the image's native size.

Where Loom lays a prompt out differently from transformers' processor, the export follows Loom, so that the
model reads what it was trained on. BLIP-2 and InstructBLIP: Loom puts the query tokens after BOS, where the
record's <image> is, while Blip2Processor and InstructBlipProcessor put them before it (LAVIS's order); so
the chat template writes the query tokens itself and the processor prepends none (num_query_tokens 0); these two
processors also drop their chat template on loading, so a prompt is laid out by the tokenizer's (the same file).
InstructBLIP's Q-Former reads the instruction alone in training; the processor hands it the whole prompt, so
its tokenizer drops the chat format's marks first.

transformers picks its torchvision image processors where torchvision is installed; their bicubic resize is not
PIL's, so for Loom's exact pixels load with `AutoProcessor.from_pretrained(OUT, backend="pil")` there.

Architectures with no transformers class (the original LLaVA's one linear layer, MiniGPT-4, MiniGPT-v2,
Qwen-VL) are written in Loom's format, with the tokenizer and chat template beside the weights, and the
reason is said. A checkpoint trained with LoRA is already merged (`vlm.lora`): nothing to do here.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

TARGETS = ("hf", "loom")
RECORD = "loom_export.json"  # in OUT: what was exported from where, and how
# why an architecture has no transformers export
NO_TRANSFORMERS_CLASS = {
    "llava": "transformers' LlavaForConditionalGeneration has LLaVA-1.5's two-layer projector; the original "
             "LLaVA's single linear layer has no transformers class",
    "minigpt4": "transformers has no MiniGPT-4 class (BLIP-2's Q-Former feeding a linear layer into Vicuna)",
    "minigpt-v2": "transformers has no MiniGPT-v2 class (grouped EVA patches projected into Llama-2)",
    "qwen-vl": "transformers has no Qwen-VL class: Qwen-VL ships its own modeling code with its checkpoint "
               "(trust_remote_code), in a layout Loom does not write",
}
# generation_config's answer length: room for a sentence; Loom's VQA evaluation asks for 8 tokens
MAX_NEW_TOKENS = 64


class ExportError(ValueError):
    """A source that cannot be exported, named with what to give instead."""


def export(source: str | Path, out: str | Path, to: str = "hf", log=print) -> dict:
    """Write the checkpoint in `source` (a run folder: its last trained stage; a stage folder; a checkpoint
    folder) to folder `out`, replaced whole: transformers' format (`to="hf"`, Loom's format where
    transformers has no class) or Loom's (`to="loom"`). Returns what loom_export.json records."""
    from .checkpoint import from_pretrained
    from .checkpoint_files import written_folder

    if to not in TARGETS:
        raise ExportError(f"--to {to!r}; expected one of {list(TARGETS)}")
    found = Checkpoint.find(source)
    if Path(source).resolve().is_relative_to(Path(out).resolve()):
        raise ExportError(f"{out}: writing there would replace {source}, which is being exported; give another "
                          "folder, e.g. RUN/export/hf")
    model = from_pretrained(found.folder)
    preset = model.preset
    from templates.chat import get_chat_format

    chat = get_chat_format(preset.chat_format)
    ids = found.token_ids(chat, model)
    record = {"source": str(source), "checkpoint": str(found.folder), "preset": preset.name, "stage": found.stage,
              "chat_format": chat.name, "token_ids": ids}
    reason = None
    if to == "hf" and preset.architecture in NO_TRANSFORMERS_CLASS:
        reason = NO_TRANSFORMERS_CLASS[preset.architecture]
        log(f"export: {preset.architecture}: {reason}; writing Loom's format instead (load it with "
            f"vlm.from_pretrained)")
        to = "loom"
    image_size = found.image_size(preset)
    with written_folder(out) as tmp:
        # BLIP-2's and InstructBLIP's processors take the placeholder from a tokenizer without image_token
        # (with one they fail on prepending its .content), and add it as the special token it already is
        tokenizer = llm_tokenizer(found.folder / "tokenizer", chat, ids, image_token=not preset.qformer_text,
                                  padding_side="right" if preset.encoder_decoder else "left")
        if to == "loom":  # what save_pretrained(format="loom") writes, with the tokenizer and chat template beside
            from safetensors.torch import save_file

            from .checkpoint import weights_to_save

            save_file(weights_to_save(model), tmp / "model.safetensors")
            (tmp / "config.json").write_text(json.dumps({"model": model.config_dict()}, indent=2))
            tokenizer.chat_template = chat.jinja()
            tokenizer.save_pretrained(tmp)
            record.update(format="loom", reason=reason, image_size=image_size)
        else:
            record.update(format="hf", **_write_hf(model, tmp, chat, tokenizer, ids, image_size, found))
        (tmp / RECORD).write_text(json.dumps(record, indent=2))
    log(f"export: {found.folder} ({preset.name}, stage {found.stage}) → {out} in "
        f"{'transformers' if record['format'] == 'hf' else 'Loom'}'s format")
    return record


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A checkpoint folder written by `loom train`, with what its trainer recorded beside it."""

    folder: Path
    stage: str | None
    state: dict  # trainer_state.json ({} when absent)

    @classmethod
    def find(cls, source: str | Path) -> "Checkpoint":
        """The checkpoint a source names: a run folder's last trained stage, a stage folder's or a checkpoint."""
        source = Path(source)
        if not source.is_dir():
            raise ExportError(f"{source}: no such folder; give a run folder (the --out of loom run or loom train), a "
                              "stage folder (RUN/train/STAGE) or a checkpoint folder")
        folder = next((f for f in (source, source / "checkpoint") if _is_loom_checkpoint(f)), None)
        if folder is None and (source / "train").is_dir():
            folder = _last_stage(source)
        if folder is None:
            if (source / "config.json").is_file():
                raise ExportError(f"{source}: a transformers checkpoint already (its config.json has no Loom "
                                  "'model' entry); give the run or checkpoint folder loom train wrote")
            raise ExportError(f"{source}: neither a run folder (with train/), a stage folder nor a checkpoint folder "
                              "(config.json + model.safetensors); give the --out of loom run or loom train")
        config = json.loads((folder / "config.json").read_text())
        state_file = folder / "trainer_state.json"
        state = json.loads(state_file.read_text()) if state_file.is_file() else {}
        return cls(folder, config.get("stage") or state.get("stage"), state)

    def image_size(self, preset) -> int:
        """The resolution the checkpoint's stage trained at: the stage's own where the paper (or the run's config,
        recorded by the trainer) changes it, else the preset's."""
        if self.state.get("image_size"):
            return int(self.state["image_size"])
        stage = next((s for s in preset.stages if s.name == self.stage), None)
        return (stage.image_size if stage is not None else None) or preset.image_size

    def token_ids(self, chat, model) -> dict:
        """The ids the tokenizer gives the chat format's marks, checked against the model's image and pad ids."""
        from tokenizers import Tokenizer

        file = self.folder / "tokenizer" / "tokenizer.json"
        if not file.is_file():
            raise ExportError(f"{self.folder}: no tokenizer/tokenizer.json (loom train copies the pack stage's "
                              "tokenizer into every checkpoint); copy the pack output's tokenizer folder there")
        tokenizer = Tokenizer.from_file(str(file))
        image = tokenizer.token_to_id("<image>")
        if image != model.image_token_id:
            raise ExportError(f"{file}: '<image>' is id {image}, the model's image token is {model.image_token_id}; "
                              "this is not the tokenizer the model was trained with")
        eos = tokenizer.token_to_id(chat.eos)
        ends = tokenizer.encode(chat.end_of_turn, add_special_tokens=False).ids if chat.end_of_turn else []
        bos = tokenizer.token_to_id(chat.bos) if chat.bos else None
        return {"image": image, "pad": model.pad_token_id, "bos": bos, "eos": eos, "stop": ends[0] if ends else eos}

    def qformer_tokenizer_folder(self) -> Path:
        """The Q-Former's tokenizer the pack stage used (InstructBLIP), beside the packed output trained on."""
        pack_dir = self.state.get("pack_dir")
        folder = Path(pack_dir).parent / "qformer_tokenizer" if pack_dir else None
        if folder is None or not (folder / "tokenizer.json").is_file():
            raise ExportError(f"{self.folder}: InstructBLIP's processor needs the Q-Former tokenizer of the pack "
                              f"stage ({folder or 'PACK/qformer_tokenizer'}), which is not there; export while the "
                              "run's pack output is still in place")
        return folder


def _is_loom_checkpoint(folder: Path) -> bool:
    config = folder / "config.json"
    if not config.is_file() or not (folder / "model.safetensors").is_file():
        return False
    model = json.loads(config.read_text()).get("model")
    return isinstance(model, dict) and "preset" in model


def _last_stage(run: Path) -> Path:
    """The checkpoint of the last stage `loom train` finished in run folder `run`."""
    manifest = run / "train" / "manifest.json"
    if not manifest.is_file():
        raise ExportError(f"{run}: training has not finished (no train/manifest.json); finish it with loom train, or "
                          f"export one stage's checkpoint: {run}/train/STAGE")
    stages = json.loads(manifest.read_text()).get("stages") or []
    if not stages:
        raise ExportError(f"{manifest}: lists no trained stage; run loom train again")
    folder = run / "train" / stages[-1]["name"] / "checkpoint"
    if not _is_loom_checkpoint(folder):
        raise ExportError(f"{folder}: the last stage's checkpoint is missing or incomplete; run loom train again")
    return folder


# ---------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------

def llm_tokenizer(folder: Path, chat, ids: dict, image_token: bool = True, padding_side: str = "left"):
    """The pack stage's tokenizer as transformers' fast tokenizer: the chat format's bos and eos, the model's pad
    (and image) tokens, and no post-processor (Loom's encoder adds no token the chat format does not write)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
    backend.post_processor = None
    saved = folder / "tokenizer_config.json"
    config = json.loads(saved.read_text()) if saved.is_file() else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=chat.bos or None, eos_token=chat.eos, unk_token=config.get("unk_token"),
        pad_token=backend.id_to_token(ids["pad"]),
        extra_special_tokens={"image_token": "<image>"} if image_token else {},
        model_max_length=config.get("model_max_length", 4096), padding_side=padding_side)


def qformer_tokenizer(folder: Path, chat, max_length: int):
    """InstructBLIP's Q-Former tokenizer reading a whole prompt as training read the instruction alone
    (`pipelines.qformer_text`): the chat format's bos, eos and image marks dropped, whitespace collapsed, then
    [CLS] ids [SEP]."""
    from tokenizers import Regex, Tokenizer, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    data = json.loads((folder / "tokenizer.json").read_text())
    marks = sorted({m for m in (chat.bos, chat.eos, "<image>") if m}, key=len, reverse=True)
    # a mark that is an added token would be cut out before the normaliser could drop it
    data["added_tokens"] = [t for t in data.get("added_tokens", []) if t["content"] not in marks]
    backend = Tokenizer.from_str(json.dumps(data))
    steps = [normalizers.Replace(Regex("|".join(re.escape(m) for m in marks)), " "),
             normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
    backend.normalizer = normalizers.Sequence(steps + ([backend.normalizer] if backend.normalizer else []))
    cls, sep = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    if cls is None or sep is None:
        raise ExportError(f"{folder}: the Q-Former tokenizer has no [CLS] / [SEP] token")
    backend.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                           special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    pad = next(t for t in ("[PAD]", "<pad>") if backend.token_to_id(t) is not None)
    return PreTrainedTokenizerFast(tokenizer_object=backend, cls_token="[CLS]", sep_token="[SEP]", pad_token=pad,
                                   model_max_length=max_length)


# ---------------------------------------------------------------------------------------------
# transformers' format
# ---------------------------------------------------------------------------------------------

def _write_hf(model, out: Path, chat, tokenizer, ids: dict, image_size: int, found: Checkpoint) -> dict:
    """Weights, config, generation settings and processor in `out`; what was written, for loom_export.json."""
    from transformers import GenerationConfig

    from .convert import to_transformers

    preset = model.preset
    hf_model = to_transformers(model)
    for config in (hf_model.config, hf_model.config.text_config):
        config.pad_token_id = ids["pad"]
    text = hf_model.config.text_config
    text.bos_token_id = ids["bos"]
    # BLIP-2 and InstructBLIP generate through their language model, whose generation settings come from
    # text_config alone: it stops where Loom stops (BLIP-2 OPT's "\n", as LAVIS sets eos_token_id)
    text.eos_token_id = ids["stop"] if preset.qformer_text else ids["eos"]
    hf_model.generation_config = GenerationConfig(
        bos_token_id=ids["bos"], eos_token_id=ids["stop"], pad_token_id=ids["pad"], do_sample=False, num_beams=1,
        max_new_tokens=MAX_NEW_TOKENS, bad_words_ids=[[ids["image"]]],
        **({"decoder_start_token_id": text.decoder_start_token_id} if preset.encoder_decoder else {}))
    hf_model.save_pretrained(out)
    return {"transformers_class": type(hf_model).__name__, "image_size": image_size,
            "visual_tokens": "per image" if preset.native_resolution else model.visual_tokens,
            **_write_processor(model, out, chat, tokenizer, image_size, found)}


def _write_processor(model, out: Path, chat, tokenizer, image_size: int, found: Checkpoint) -> dict:
    """The transformers processor that prepares an image and a prompt as Loom's evaluation does, saved in `out`;
    its class names and how a prompt is made with it."""
    import transformers

    preset = model.preset
    if preset.native_resolution:
        return _write_qwen2_vl_processor(preset, out, chat, tokenizer)
    # vlm.images: pad to a square with the mean colour, resize bicubic to the stage's size, normalise
    square = {"height": image_size, "width": image_size}
    images = transformers.LlavaImageProcessorPil(
        do_pad=True, size=square, crop_size=square, do_center_crop=False, resample=3,  # PIL's BICUBIC
        image_mean=list(preset.image_mean), image_std=list(preset.image_std))
    prompt = "processor.apply_chat_template(messages, tokenize=True, return_dict=True)"
    if preset.connector == "mlp2x_gelu":
        processor = transformers.LlavaProcessor(
            images, tokenizer, patch_size=preset.patch_size, chat_template=chat.jinja(),
            vision_feature_select_strategy="full" if preset.keep_cls else "default", image_token="<image>",
            num_additional_image_tokens=1)  # CLIP's CLS token, dropped again unless the preset keeps it
    else:
        if preset.qformer_text == "instruction":
            max_length = preset.qformer_instruction_length  # as pack and evaluation
            qformer = qformer_tokenizer(found.qformer_tokenizer_folder(), chat, max_length)
            processor = transformers.InstructBlipProcessor(images, tokenizer, qformer, num_query_tokens=0)
        else:
            processor = transformers.Blip2Processor(images, tokenizer, num_query_tokens=0)
        # these two processors neither take a chat template nor keep one on loading; the tokenizer loaded
        # beside them reads it from chat_template.jinja
        processor.chat_template = chat.jinja(image_placeholder="<image>" * model.visual_tokens)
        prompt = "processor(images=image, text=processor.tokenizer.apply_chat_template(messages, tokenize=False))"
    processor.save_pretrained(out)
    return {"processor": type(processor).__name__, "image_processor": type(images).__name__, "prompt": prompt}


def _write_qwen2_vl_processor(preset, out: Path, chat, tokenizer) -> dict:
    """What Qwen2VLProcessor.save_pretrained writes, written without building one: in transformers 5 its video
    processor (which Loom never uses: a video is its frames, each an image) needs torchvision, which Loom does
    not. Images are resized by Qwen2-VL's rule at their native size, as `ImageProcessor.native` does."""
    import transformers

    from .preset import QWEN2_VL_MAX_PIXELS, QWEN2_VL_MIN_PIXELS

    patches = dict(patch_size=preset.patch_size, merge_size=preset.vision.get("spatial_merge_size", 2),
                   temporal_patch_size=preset.vision.get("temporal_patch_size", 2), image_mean=list(preset.image_mean),
                   image_std=list(preset.image_std))
    images = transformers.Qwen2VLImageProcessorPil(
        size={"shortest_edge": QWEN2_VL_MIN_PIXELS, "longest_edge": QWEN2_VL_MAX_PIXELS}, **patches)
    tokenizer.chat_template = chat.jinja()
    tokenizer.save_pretrained(out)  # with chat_template.jinja
    (out / "processor_config.json").write_text(json.dumps({
        "processor_class": "Qwen2VLProcessor", "image_processor": images.to_dict(),
        "video_processor": {"video_processor_type": "Qwen2VLVideoProcessor", **patches}}, indent=2))
    return {"processor": "Qwen2VLProcessor", "image_processor": type(images).__name__,
            "prompt": "processor.apply_chat_template(messages, tokenize=True, return_dict=True)"}
