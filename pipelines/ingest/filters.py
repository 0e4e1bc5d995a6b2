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

    @classmethod
    def from_config(cls, section: dict, languages: list[str]) -> "FilterConfig":
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


class LanguageId:
    """Offline language identification (lingua) of captions; drops languages the run does not mix.

    Short captions are often ambiguous ("a blue hexagon on beige" scores French 0.14 and
    English 0.11), so a caption is dropped only when a language outside the mix wins with
    confidence of at least `foreign_min_confidence`; an uncertain one is kept under the most
    probable language of the mix, if that language has any real support.
    """

    def __init__(self, config: FilterConfig):
        from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

        self.config = config
        self._allowed = {}
        for code in config.languages:
            try:
                self._allowed[Language.from_iso_code_639_1(getattr(IsoCode639_1, code.upper()))] = code
            except AttributeError as err:
                raise ValueError(f"ingest.languages: {code!r} is not an ISO 639-1 code lingua knows") from err
        # models load lazily per language, so an actor only holds the ones captions need
        self._detector = LanguageDetectorBuilder.from_all_languages().build()

    def classify(self, caption: str) -> tuple[str | None, float]:
        """(language code, confidence); the code is None when the caption is in a language outside the mix."""
        scores = self._detector.compute_language_confidence_values(caption)
        if not scores:
            return None, 0.0
        top = scores[0]
        if top.language in self._allowed:
            return self._allowed[top.language], top.value
        if top.value >= self.config.foreign_min_confidence:
            return None, top.value
        allowed = [s for s in scores if s.language in self._allowed]
        if allowed and allowed[0].value >= self.config.uncertain_min_confidence:
            return self._allowed[allowed[0].language], allowed[0].value
        return None, top.value

    def detected(self, caption: str) -> str:
        top = self._detector.detect_language_of(caption)
        return top.iso_code_639_1.name.lower() if top else "unknown"

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
            lang, confidence = self.classify(caption)
            confidences.append(confidence)
            if lang is None:
                langs.append(self.detected(caption))
                reasons.append("language")
            else:
                langs.append(lang)
                reasons.append(None)
        batch = batch.append_column("lang", pa.array(langs, pa.string()))
        batch = batch.append_column("lang_confidence", pa.array(confidences, pa.float32()))
        return mark(batch, reasons)


def perceptual_hash(batch: pa.Table) -> pa.Table:
    """256-bit DCT perceptual hash of each kept image, as 64 hex digits; undecodable images are dropped.

    The common 64-bit hash collides on sparse images (a small shape on a plain background is
    mostly background at 8x8 DCT resolution); 16x16 keeps small objects' layout.
    """
    import imagehash
    from PIL import Image

    hashes: list[str | None] = []
    reasons: list[str | None] = []
    for keep, data in zip(kept_mask(batch), batch["jpg"].to_pylist()):
        if not keep:
            hashes.append(None)
            reasons.append(None)
            continue
        try:
            with Image.open(io.BytesIO(data)) as image:
                hashes.append(str(imagehash.phash(image.convert("RGB"), hash_size=16)))
            reasons.append(None)
        except Exception:  # any decoder failure is the sample's fault, recorded as such
            hashes.append(None)
            reasons.append("decode_error")
    batch = batch.append_column("phash", pa.array(hashes, pa.string()))
    return mark(batch, reasons)
