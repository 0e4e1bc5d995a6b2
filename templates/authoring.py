"""Tools for template authors: what each task's templates look like in numbers, and rendered examples."""
from __future__ import annotations

import re
import statistics
from collections.abc import Callable

from templates.chat import ChatFormat
from templates.library import BREVITY, TemplateRefused, load_task_templates, render_for_record, task_names

# the part of a rendered example the model is trained to produce is shown between these marks
TARGET_OPEN, TARGET_CLOSE = "\u25b6", "\u25c0"


def prompt_length(text: str, lang: str) -> int:
    """Words for space-separated languages, characters (without spaces) for Chinese, without the <image> mark."""
    text = text.replace("<image>", " ")
    return len(re.sub(r"\s", "", text)) if lang == "zh" else len(text.split())


def template_stats(count_tokens: Callable[[str], int] | None = None) -> list[dict]:
    """Per task and language (Loom's templates and those of the user's folders): how many templates, their
    brevity split, and how long their prompts are (words, or Chinese characters; tokens too when
    `count_tokens` is given)."""
    rows = []
    for task in task_names():
        templates = load_task_templates(task)
        for lang in sorted({t.lang for t in templates}):
            pool = [t for t in templates if t.lang == lang]
            lengths = [prompt_length(t.prompt, lang) for t in pool]
            row = {"task": task, "lang": lang, "templates": len(pool),
                   "brevity": {b: sum(t.brevity == b for t in pool) for b in BREVITY},
                   "unit": "characters" if lang == "zh" else "words",
                   "length": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)}}
            if count_tokens is not None:
                tokens = [count_tokens(t.prompt) for t in pool]
                row["tokens"] = {"min": min(tokens), "median": statistics.median(tokens), "max": max(tokens)}
            rows.append(row)
    return rows


def language_totals(rows: list[dict]) -> list[dict]:
    """`template_stats` rows added up per language: templates and their brevity split over every task."""
    totals: dict[str, dict] = {}
    for row in rows:
        total = totals.setdefault(row["lang"], {"lang": row["lang"], "tasks": 0, "templates": 0,
                                                "brevity": dict.fromkeys(BREVITY, 0)})
        total["tasks"] += 1
        total["templates"] += row["templates"]
        for label, n in row["brevity"].items():
            total["brevity"][label] += n
    return [totals[lang] for lang in sorted(totals)]


def preview(records: list[dict], chat: ChatFormat, seed: int = 0) -> list[str]:
    """Each record as the model sees it: its template (drawn as render draws it) laid out in `chat`,
    the trained-on text between TARGET_OPEN and TARGET_CLOSE. A record its template refuses (render
    would drop it) is shown with the refusal."""
    shown = []
    for record in records:
        try:
            template, messages = render_for_record(record, seed)
        except TemplateRefused as err:
            shown.append(f"── {record['id']}: render drops it as '{err.reason}': {err}")
            continue
        text = "".join(f"{TARGET_OPEN}{piece}{TARGET_CLOSE}" if target else piece
                       for piece, target in chat.pieces(messages))
        images = record.get("frames") or [record.get("image") or {}]
        seen = f"image {images[0].get('width')}x{images[0].get('height')} {images[0].get('path')}"
        if len(images) > 1:
            seen = f"{len(images)} frames, the first {seen}"
        shown.append(f"── {template.id} ({template.lang}, brevity {template.brevity}) · {record['id']} · {seen}\n{text}")
    return shown
