"""Visual question answering with a trained model: Loom's one answering loop (every preset, batched, greedy or
beam search), which `loom train`'s held-out evaluation and `answer_questions` both run; VQA accuracy and CIDEr-D."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .generate import generate
from .images import ImageProcessor
from .model import VisionLanguageModel

__all__ = ["answer_prompts", "answer_questions", "exact_matches", "generate", "image_inputs", "normalize_answer",
           "vqa_accuracy"]


def _prompt_ids(tokenizer, prompt: str, image_token_id: int, visual_tokens: int) -> list[int]:
    """Token ids of a formatted prompt with its single <image> expanded to visual_tokens ids."""
    # The chat format already wrote any <s>/</s> it wants: the tokenizer must not add its own.
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    count = ids.count(image_token_id)
    if count != 1:
        raise ValueError(f"prompt {prompt[:80]!r}...: holds {count} image tokens (id {image_token_id}); expected exactly 1")
    at = ids.index(image_token_id)
    return ids[:at] + [image_token_id] * visual_tokens + ids[at + 1:]


def _eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    eos = tokenizer.convert_tokens_to_ids("</s>")
    if eos is None or eos == tokenizer.unk_token_id:
        raise ValueError("tokenizer has no eos token and no '</s>' in its vocabulary; generation could not stop")
    return int(eos)


def _visual_tokens(model: VisionLanguageModel, image: Any) -> int:
    """LLM positions `image` takes: the model's count, or Qwen2-VL's for the image's width and height."""
    if not model.preset.native_resolution:
        return model.visual_tokens
    if isinstance(image, dict) and "width" in image and "height" in image:
        return model.preset.visual_tokens_for(image)
    if hasattr(image, "size"):  # a PIL image
        return model.preset.visual_tokens_for({"width": image.size[0], "height": image.size[1]})
    raise ValueError(f"image {str(image)[:80]}: Qwen2-VL sizes its visual tokens by the image; give a reference "
                     "with width and height (as a record's images carry) or a PIL image")


def image_inputs(preset, processor: ImageProcessor, images: Sequence[Any],
                 instructions: Sequence[list[int]] | None = None, instruction_pad: int = 0) -> tuple:
    """(pixel_values, other image inputs) of one image per question, as the preset's model reads them:
    Qwen2-VL's patches and their grids at native resolution, and with `instructions` (InstructBLIP) each
    question's ids in the Q-Former's vocabulary, right-padded with `instruction_pad`."""
    inputs = {}
    pixels, grid = processor.model_pixels(images)  # (B, 3, H, W), or Qwen2-VL's patches and their grids
    if grid is not None:
        inputs["image_grid_thw"] = grid
    if instructions is not None:
        width = max(len(row) for row in instructions)
        inputs["qformer_input_ids"] = torch.tensor([list(row) + [instruction_pad] * (width - len(row))
                                                    for row in instructions])
        inputs["qformer_attention_mask"] = torch.tensor([[1] * len(row) + [0] * (width - len(row))
                                                         for row in instructions])
    return pixels, inputs


def answer_prompts(
    model: VisionLanguageModel,
    tokenizer,
    prompts: Sequence[list[int]],
    images: Sequence[Any],
    processor: ImageProcessor,
    stop_id: int,
    pad_token_id: int,
    instructions: Sequence[list[int]] | None = None,
    instruction_pad: int = 0,
    batch_size: int = 8,
    max_new_tokens: int = 8,
    num_beams: int = 1,
    use_cache: bool = True,
) -> list[str]:
    """Loom's one answering loop: each token-id prompt (its image already expanded to visual tokens)
    continued from its image, in batches, greedy (or beam search with num_beams > 1), until `stop_id`;
    decoded by `tokenizer` without special tokens. Every preset runs here: `instructions` are InstructBLIP's
    Q-Former ids per prompt, Qwen2-VL's images go in at native resolution (`image_inputs`)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    answers: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            end = start + batch_size
            pixels, inputs = image_inputs(model.preset, processor, images[start:end],
                                          instructions[start:end] if instructions is not None else None,
                                          instruction_pad)
            continuations = generate(model, prompts[start:end], pixels.to(device), stop_id, pad_token_id,
                                     max_new_tokens, num_beams=num_beams, use_cache=use_cache,
                                     **{k: v.to(device) for k, v in inputs.items()})
            answers.extend(tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in continuations)
    finally:
        model.train(was_training)
    return answers


def _qformer_ids(qformer_tokenizer, text: str, max_length: int) -> list[int]:
    """[CLS] ids [SEP] of an instruction in the Q-Former's (BERT) vocabulary, as pack writes them."""
    cls, sep = (qformer_tokenizer.convert_tokens_to_ids(t) for t in ("[CLS]", "[SEP]"))
    ids = qformer_tokenizer(text, add_special_tokens=False)["input_ids"][: max_length - 2]
    return [cls, *ids, sep]


def answer_questions(
    model: VisionLanguageModel,
    tokenizer,
    items: Sequence[dict[str, Any]],
    prompt_fn: Callable[[dict[str, Any]], str] | None = None,
    max_new_tokens: int = 8,
    batch_size: int = 8,
    use_cache: bool = True,
    image_root: str | Path | None = None,
    num_beams: int = 1,
    image_roots: dict[str, str] | None = None,
    qformer_tokenizer=None,
    stop_id: int | None = None,
    image_size: int | None = None,
) -> list[str]:
    """Answers to visual questions, one string per item (greedy, or beam search with num_beams > 1), by
    `answer_prompts`, so any preset answers here as in `loom train`'s evaluation.

    Each item has an `image` (a reference: shard+key, path, {root, path}, or a PIL image) and either a
    `prompt` already in the model's chat format with one `<image>`, or whatever `prompt_fn(item)` needs to
    write that prompt. `image_root` is the run folder relative references start from, `image_roots` the
    folders of {root, path} references (a render manifest's image_roots). InstructBLIP's Q-Former reads each
    item's `question` through `qformer_tokenizer` (a transformers BERT tokenizer, e.g. the run's
    pack/qformer_tokenizer). Generation stops at `stop_id` (default: the tokenizer's end of sequence)."""
    texts = [prompt_fn(item) if prompt_fn else item["prompt"] for item in items]
    prompts = [_prompt_ids(tokenizer, text, model.image_token_id, _visual_tokens(model, item["image"]))
               for text, item in zip(texts, items)]
    instructions, instruction_pad = None, 0
    if model.preset.qformer_text == "instruction":
        if qformer_tokenizer is None:
            raise ValueError(f"{model.preset.name}: its Q-Former reads each question; pass qformer_tokenizer (the "
                             "run's pack/qformer_tokenizer, loaded with transformers' AutoTokenizer)")
        missing = [k for k, item in enumerate(items) if "question" not in item]
        if missing:
            raise ValueError(f"item {missing[0]}: no 'question'; {model.preset.name}'s Q-Former reads the question "
                             "alone, so give each item its question text")
        instructions = [_qformer_ids(qformer_tokenizer, " ".join(item["question"].replace("<image>", " ").split()),
                                     model.preset.qformer_instruction_length) for item in items]
        instruction_pad = qformer_tokenizer.pad_token_id or 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else model.pad_token_id
    return answer_prompts(model, tokenizer, prompts, [item["image"] for item in items],
                          ImageProcessor(model.preset, root=image_root, roots=image_roots, image_size=image_size),
                          stop_id if stop_id is not None else _eos_id(tokenizer), pad, instructions, instruction_pad,
                          batch_size, max_new_tokens, num_beams, use_cache)


# ---------------------------------------------------------------------------------------------
# VQA accuracy (normalisation after the official VQA evaluation script)
# ---------------------------------------------------------------------------------------------

_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {
    "dont": "don't", "doesnt": "doesn't", "isnt": "isn't", "arent": "aren't", "cant": "can't",
    "wont": "won't", "didnt": "didn't", "wasnt": "wasn't", "werent": "weren't", "hasnt": "hasn't",
    "havent": "haven't", "couldnt": "couldn't", "shouldnt": "shouldn't", "wouldnt": "wouldn't",
    "thats": "that's", "whats": "what's", "its": "it's", "im": "i'm", "youre": "you're",
}
_PUNCTUATION = ";/[]\"{}()=+\\_-><@`,?!*#%^&$"
# A period is punctuation unless a digit follows ("2.5" stays, "yes." loses it).
_PERIOD = re.compile(r"\.(?!\d)")
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")


def normalize_answer(answer: str) -> str:
    """VQA-style canonical form: lowercase, no punctuation or articles, number words as digits."""
    text = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    text = _COMMA_IN_NUMBER.sub(r"\1\3", text)
    for p in _PUNCTUATION:
        # As the official script: a mark touching a space vanishes ("yes !"), one inside a
        # word separates it ("t-shirt" -> "t shirt").
        text = text.replace(p, "" if (p + " " in text or " " + p in text) else " ")
    text = _PERIOD.sub("", text)
    words = []
    for word in text.split():
        word = _NUMBER_WORDS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def exact_matches(predictions: Sequence[str], answers_lists: Sequence[Sequence[str]]) -> list[bool]:
    """Per item: the normalised prediction equals one of its normalised reference answers (what
    vqa_accuracy's exact_match averages)."""
    if len(predictions) != len(answers_lists):
        raise ValueError(f"{len(predictions)} predictions but {len(answers_lists)} answer lists")
    return [normalize_answer(prediction) in {normalize_answer(a) for a in answers}
            for prediction, answers in zip(predictions, answers_lists)]


def accuracy_by_question_type(predictions: Sequence[str], answers_lists: Sequence[Sequence[str]],
                              question_types: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per question type, in type order: its questions' count `n` and exact-match `accuracy`."""
    positions: dict[str, list[int]] = {}
    for i, question_type in enumerate(question_types):
        positions.setdefault(question_type, []).append(i)
    return {t: {"n": len(v), "accuracy": vqa_accuracy([predictions[i] for i in v],
                                                      [answers_lists[i] for i in v])["exact_match"]}
            for t, v in sorted(positions.items())}


def vqa_accuracy(predictions: Sequence[str], answers_lists: Sequence[Sequence[str]]) -> dict[str, float]:
    """Exact-match accuracy, and the official VQA accuracy where an item has 10 human answers.

    exact_match: the normalised prediction equals any normalised reference answer.
    vqa: per item with >= 10 answers, the official leave-one-annotator-out average of
    min(#matching others / 3, 1) (so 3 of 10 humans agreeing scores 0.9, 4 or more 1.0);
    items with fewer answers count their exact match. Both are means over items.
    """
    if len(predictions) != len(answers_lists):
        raise ValueError(f"{len(predictions)} predictions but {len(answers_lists)} answer lists")
    if not predictions:
        return {"exact_match": 0.0, "vqa": 0.0, "count": 0}
    exact, vqa = 0.0, 0.0
    for prediction, answers in zip(predictions, answers_lists):
        guess = normalize_answer(prediction)
        truths = [normalize_answer(a) for a in answers]
        hit = float(guess in truths)  # exact_matches' test, on the answers normalised once here
        exact += hit
        if len(truths) >= 10:
            scores = []
            for left_out in range(len(truths)):
                matches = sum(1 for i, t in enumerate(truths) if i != left_out and t == guess)
                scores.append(min(matches / 3.0, 1.0))
            vqa += sum(scores) / len(scores)
        else:
            vqa += hit
    n = len(predictions)
    return {"exact_match": exact / n, "vqa": vqa / n, "count": n}


# ---------------------------------------------------------------------------------------------
# Captions: CIDEr-D (Vedantam, Zitnick and Parikh, CVPR 2015; the consensus metric of COCO captioning)
# ---------------------------------------------------------------------------------------------

def _caption_words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _ngram_counts(words: list[str], n: int) -> dict[tuple[str, ...], int]:
    counts: dict[tuple[str, ...], int] = {}
    for k in range(len(words) - n + 1):
        gram = tuple(words[k:k + n])
        counts[gram] = counts.get(gram, 0) + 1
    return counts


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4, sigma: float = 6.0) -> float:
    """CIDEr-D of candidate captions against each image's reference captions (x10, as COCO reports it).

    Per n-gram order: count x IDF vectors (document frequency over the images' reference sets), the candidate's
    vector clipped by each reference's (the "-D": repeating a word earns nothing), cosine similarity times
    a Gaussian penalty on the length difference, averaged over references; then averaged over orders."""
    import math

    if len(candidates) != len(references) or not candidates:
        raise ValueError(f"cider_d: {len(candidates)} candidates for {len(references)} reference sets; give one set per candidate")
    words_c = [_caption_words(c) for c in candidates]
    words_r = [[_caption_words(r) for r in refs] for refs in references]
    images = len(candidates)
    score = 0.0
    for n in range(1, max_n + 1):
        grams_r = [[_ngram_counts(w, n) for w in refs] for refs in words_r]
        document_frequency: dict[tuple[str, ...], int] = {}
        for refs in grams_r:
            for gram in set().union(*refs) if refs else ():
                document_frequency[gram] = document_frequency.get(gram, 0) + 1

        def vector(counts: dict) -> tuple[dict, float]:  # term counts times inverse document frequency
            weights = {g: c * math.log(images / max(document_frequency.get(g, 0), 1)) for g, c in counts.items()}
            return weights, math.sqrt(sum(v * v for v in weights.values()))

        order = 0.0
        for cand_words, cand_grams, refs_words, refs_grams in zip(words_c, (_ngram_counts(w, n) for w in words_c),
                                                                  words_r, grams_r):
            cand_vec, cand_norm = vector(cand_grams)
            similarity = 0.0
            for ref_words, ref_grams in zip(refs_words, refs_grams):
                ref_vec, ref_norm = vector(ref_grams)
                dot = sum(min(v, ref_vec.get(g, 0.0)) * ref_vec.get(g, 0.0) for g, v in cand_vec.items())
                if cand_norm and ref_norm:
                    penalty = math.exp(-((len(cand_words) - len(ref_words)) ** 2) / (2 * sigma ** 2))
                    similarity += penalty * dot / (cand_norm * ref_norm)
            order += similarity / max(len(refs_words), 1)
        score += order / images
    return 10.0 * score / max_n
