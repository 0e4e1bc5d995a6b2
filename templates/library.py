"""Instruction templates: loading the per-task Jinja sets, choosing one per record, rendering messages."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jinja2
import jinja2.meta
import yaml
from jinja2.sandbox import SecurityError

from templates.sandbox import (LIMITS, MAX_MESSAGE_CHARS, MAX_TEMPLATE_CHARS, OVER_LIMITS, BoundedEnvironment,
                               OverLimit, start_record)

TASKS_DIR = Path(__file__).parent / "tasks"
SETS_DIR = Path(__file__).parent / "sets"  # named sets of templates, e.g. a paper's own (render.template_set)
BREVITY = ("short", "long", "none")
# Tasks whose records are already conversations: no templates (InstructBLIP uses LLaVA-Instruct as it is).
CONVERSATION_TASKS = ("llava_instruct",)
class _EmptyField(ValueError):
    """A template printed a record field that is None (e.g. the answer of a split without answers)."""


# StrictUndefined refuses a field the record lacks; printing_none refuses one it has as None, which would
# otherwise print as the word "None" (a test split's missing answer becoming a training target).
# Templates are user-written and so untrusted: the sandbox keeps them from reaching Python internals,
# and bounds what they may build and spend (templates/sandbox.py).
_ENV = BoundedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False,
                          printing_none=_EmptyField)
# InstructBLIP appends the first 30 OCR tokens to the instruction of scene-text datasets.
OCR_TOKENS_SHOWN = 30
# Fields only some datasets of a task carry; a record without one renders as if it were None, so one
# template serves a task's datasets alike (the filters below print nothing for None).
OPTIONAL_FIELDS = ("choices", "ocr_tokens", "history", "hint")


def _ocr(tokens) -> str:
    """'OCR tokens: a, b, c' (the first OCR_TOKENS_SHOWN), or nothing for a record without OCR."""
    return f"OCR tokens: {', '.join(tokens[:OCR_TOKENS_SHOWN])}" if tokens else ""


def _options(choices) -> str:
    """'Options: (a) x, (b) y', or nothing for an open question."""
    return "Options: " + ", ".join(f"({chr(ord('a') + i)}) {c}" for i, c in enumerate(choices)) if choices else ""


def _history(turns) -> str:
    """Earlier rounds of a dialog as 'Q: ... A: ...' lines, or nothing."""
    return "".join(f"Q: {t['question']} A: {t['answer']}\n" for t in turns or [])


_ENV.filters.update(ocr=_ocr, options=_options, history=_history)


class TemplateError(ValueError):
    """A template file or a record that a template cannot render."""


class TemplateRefused(TemplateError):
    """One record a template cannot render (a bound crossed, the sandbox refusing, an error on this record's
    values): render drops the record with `reason` and goes on. A field missing or None, which fails every
    record of a dataset alike, stays a plain TemplateError that stops the stage."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason

    @property
    def over_limits(self) -> bool:
        """Whether a bound was crossed (or the sandbox refused), rather than an error on this record's values."""
        return self.reason in OVER_LIMITS


@dataclass(frozen=True)
class InstructionTemplate:
    """One way of asking for a task: a user prompt and the response built from the record."""

    id: str
    task: str
    lang: str
    brevity: str
    prompt: str
    response: str
    draw: bool = True  # False: an evaluation prompt, used only where a config pins it by id

    @property
    def fields(self) -> tuple[str, ...]:
        """The record fields the prompt and response read (`loom templates lint` checks them against the task's)."""
        return _compiled(self.prompt, self.response)[1]

    def render(self, record: dict) -> list[dict]:
        """The conversation for one record: a user turn (with `<image>`) and an assistant turn."""
        fields = {**dict.fromkeys(OPTIONAL_FIELDS), **record}
        start_record()
        try:
            template, names, used_globals = _compiled(self.prompt, self.response)
            # shared=True: the record's fields are the whole namespace (no copy merged with Jinja's
            # globals per render, which cost as much as the render itself), with the few globals it uses
            values = {name: fields[name] for name in names if name in fields}
            context = template.new_context({**used_globals, **values} if used_globals else values, shared=True)
            text = _ENV.concat(template.root_render_func(context))
        except jinja2.UndefinedError as err:
            raise TemplateError(f"template {self.id}: record {record.get('id')!r}: {err.message}") from err
        except _EmptyField as err:
            empty = sorted(name for name, value in record.items() if value is None)
            raise TemplateError(f"template {self.id}: record {record.get('id')!r}: a field it uses is empty "
                                f"(None fields: {empty}); a split without answers cannot be rendered as "
                                "training conversations") from err
        except OverLimit as err:
            raise self._refused(record, err.reason, err.detail) from None
        except SecurityError as err:
            raise self._refused(record, "template_unsafe", f"the sandbox refused: {err}") from None
        except RecursionError:
            raise self._refused(record, "template_too_slow", "calls nested deeper than Python allows") from None
        except MemoryError:
            raise self._refused(record, "template_too_big", "ran out of memory") from None
        except Exception as err:  # noqa: BLE001 - any other error of a template on this record's values
            raise self._refused(record, "template_failed", f"{type(err).__name__}: {err}") from err
        if text.count(_TURN_MARK) != 1:
            raise self._refused(record, "reserved_mark", "its text holds U+E000, which Loom reserves to split "
                                "prompt from response; remove it from the record")
        prompt, _, response = text.partition(_TURN_MARK)
        if len(prompt) > MAX_MESSAGE_CHARS or len(response) > MAX_MESSAGE_CHARS:
            raise self._refused(record, "text_too_long", f"rendered text over {MAX_MESSAGE_CHARS:,} characters "
                                f"(prompt {len(prompt):,}, response {len(response):,})")
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]

    def _refused(self, record: dict, reason: str, detail: str) -> TemplateRefused:
        hint = f"; {LIMITS}" if reason in OVER_LIMITS else ""
        return TemplateRefused(f"template {self.id}, record {record.get('id')}: {detail}{hint}", reason)


# the user's own template folders (a config's templates.paths), read alongside TASKS_DIR: `use_template_folders`
_user_folders: tuple[Path, ...] = ()


def use_template_folders(folders) -> None:
    """Read the task files of `folders` (each `TASK.yaml`, in the format of templates/tasks/) alongside
    Loom's own from now on: a user file adds its templates to its task's. A template id that is already
    taken (by a built-in template or another user file) is refused naming both files."""
    global _user_folders
    wanted = tuple(Path(folder).resolve() for folder in folders)
    for folder in wanted:
        if not folder.is_dir():
            raise TemplateError(f"template folder {folder}: no such folder; give folders of TASK.yaml files "
                                "(the format of templates/tasks/)")
    if wanted != _user_folders:
        previous, _user_folders = _user_folders, wanted
        reload_templates()
        try:
            _check_unique_ids()  # and every file read now: a malformed one is named before any work
        except TemplateError:
            _user_folders = previous
            reload_templates()
            raise


def task_files(task: str | None = None) -> list[Path]:
    """Every task file (of one task): Loom's own, then the user folders' in their order."""
    pattern = f"{task}.yaml" if task else "*.yaml"
    return [path for folder in (TASKS_DIR, *_user_folders) for path in sorted(folder.glob(pattern))]


def task_names() -> list[str]:
    """The tasks that have templates, Loom's own and the user's."""
    return sorted({path.stem for path in task_files()})


def _set_files() -> list[Path]:
    return sorted(p for p in SETS_DIR.glob("*/*.yaml") if p.name != "set.yaml")


def _check_unique_ids() -> None:
    first: dict[str, Path] = {}
    for path in [*task_files(), *_set_files()]:
        for template in _load_file(path):
            if template.id in first:
                raise TemplateError(f"template id {template.id!r} is in both {first[template.id]} and {path}; "
                                    "template ids are unique: rename the one in your folder")
            first[template.id] = path


@lru_cache(maxsize=None)
def load_task_templates(task: str) -> tuple[InstructionTemplate, ...]:
    files = task_files(task)
    if not files:
        raise TemplateError(f"no templates for task {task!r}; tasks with templates: {task_names()}")
    return tuple(template for path in files for template in _load_file(path))


# A template choice is a template id (pinned), or SET_MARK + the name of a template set to draw from.
SET_MARK = "@"
DEFAULT_SET = "default"


def template_sets() -> list[str]:
    """The template sets render can draw from: Loom's own (default), and each folder of templates/sets/."""
    return [DEFAULT_SET, *sorted(p.parent.name for p in SETS_DIR.glob("*/set.yaml"))]


@lru_cache(maxsize=None)
def template_set(name: str) -> dict:
    """A set's description: `covers` (Loom task -> the set's file) and `languages`."""
    path = SETS_DIR / name / "set.yaml"
    if not path.is_file():
        raise TemplateError(f"no template set {name!r}; sets: {', '.join(template_sets())}")
    return yaml.safe_load(path.read_text())


@lru_cache(maxsize=None)
def set_templates(name: str, task: str) -> tuple[InstructionTemplate, ...]:
    """The templates a set draws a Loom task's records from (none when the set does not cover the task)."""
    spec = template_set(name)
    return _load_file(SETS_DIR / name / f"{spec['covers'][task]}.yaml") if task in spec["covers"] else ()


@lru_cache(maxsize=None)
def _load_file(path: Path) -> tuple[InstructionTemplate, ...]:
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise TemplateError(f"{path}: not a readable YAML template file ({err})") from err
    if not isinstance(spec, dict) or not isinstance(spec.get("templates"), list) or "task" not in spec:
        raise TemplateError(f"{path}: expected a mapping with `task`, `response` and a list of `templates` "
                            "(the format of templates/tasks/)")
    if path.parent.parent != SETS_DIR and spec["task"] != path.stem:
        raise TemplateError(f"{path}: task {spec['task']!r} differs from the file name; a task file is TASK.yaml")
    templates = []
    for i, t in enumerate(spec["templates"]):
        if not isinstance(t, dict):
            raise TemplateError(f"{path}: templates[{i}]: {t!r:.60}; expected a mapping with id, lang, brevity, prompt")
        for field in ("id", "lang", "brevity", "prompt"):
            if field not in t:
                raise TemplateError(f"{path}: templates[{i}]: missing field {field!r}")
        if t["brevity"] not in BREVITY:
            raise TemplateError(f"{path}: templates[{i}] ({t['id']}): brevity {t['brevity']!r}; expected one of {BREVITY}")
        if t["prompt"].count("<image>") != 1:
            raise TemplateError(f"{path}: templates[{i}] ({t['id']}): the prompt must hold <image> exactly once")
        if "response" not in t and "response" not in spec:
            raise TemplateError(f"{path}: templates[{i}] ({t['id']}): no response (give `response:` for the file "
                                "or the template)")
        response = t.get("response", spec.get("response"))
        if len(t["prompt"]) + len(response) > MAX_TEMPLATE_CHARS:
            raise TemplateError(f"{path}: templates[{i}] ({t['id']}): prompt and response are "
                                f"{len(t['prompt']) + len(response):,} characters; at most {MAX_TEMPLATE_CHARS:,}")
        _ENV.parse(t["prompt"])  # a syntax error surfaces here, with the file named by the caller
        try:
            _compiled(t["prompt"], response)
        except jinja2.TemplateAssertionError as err:  # a filter or test that does not exist (or is left out)
            raise TemplateError(f"{path}: templates[{i}] ({t['id']}): {err.message}") from err
        templates.append(InstructionTemplate(t["id"], spec["task"], t["lang"], t["brevity"], t["prompt"],
                                             response, bool(t.get("draw", True))))
    return tuple(templates)


def template_by_id(template_id: str) -> InstructionTemplate:
    for path in [*task_files(), *_set_files()]:
        for template in _load_file(path):
            if template.id == template_id:
                return template
    raise TemplateError(f"no template with id {template_id!r}")


# Prompt and response render as one template, split at this mark: one Jinja context per record, not two.
_TURN_MARK = "\ue000"  # private use: no dataset text carries it, and Jinja's whitespace control cannot strip it


@lru_cache(maxsize=4096)
def _compiled(prompt: str, response: str) -> tuple[jinja2.Template, tuple[str, ...], dict]:
    """A prompt and response compiled once (compiling costs a hundred times what rendering does), the
    record fields they read (Jinja is handed only those) and the globals they use (`range`, `dict`)."""
    source = prompt + _TURN_MARK + response
    tree = _ENV.parse(source)
    names = jinja2.meta.find_undeclared_variables(tree)  # leaves out the environment's globals
    used_globals = {node.name for node in tree.find_all(jinja2.nodes.Name) if node.name in _ENV.globals}
    return (_ENV.from_string(source), tuple(sorted(names)), {name: _ENV.globals[name] for name in used_globals})


def _of(templates, lang: str, brevity: str | None) -> tuple[InstructionTemplate, ...]:
    """The drawable templates of one language and brevity label; brevity None: the short and open ones (a
    `long` template asks for a detailed answer, drawn only where a dataset's brevity setting asks for it)."""
    return tuple(t for t in templates if t.lang == lang and t.draw
                 and (t.brevity == brevity if brevity else t.brevity != "long"))


@lru_cache(maxsize=None)
def template_pool(task: str, lang: str, set_name: str = DEFAULT_SET,
                  brevity: str | None = None) -> tuple[InstructionTemplate, ...]:
    """The templates a record of `task` in `lang` is drawn from, for one brevity label (None: short and
    open alike): the set `set_name`'s where it has such templates, else Loom's own (with the user's)."""
    pool = () if set_name == DEFAULT_SET else _of(set_templates(set_name, task), lang, brevity)
    return pool or _of(load_task_templates(task), lang, brevity)


def choose_template(task: str, lang: str, record_id: str, seed: int, set_name: str = DEFAULT_SET,
                    brevity: str | None = None) -> InstructionTemplate:
    """A template drawn uniformly for this record, the same on every run with the same seed, from
    `template_pool`: among the templates of label `brevity` where one is asked (templates/brevity.py
    decides which records ask), else among the short and open ones."""
    pool = template_pool(task, lang, set_name, brevity)
    if not pool:
        wording = f"{brevity}-worded " if brevity else ""
        fix = (f"; set this dataset's brevity share for {brevity} to 0 (render.brevity), or add such templates "
               "(templates.paths)") if brevity else ""
        raise TemplateError(f"no {wording}{lang!r} templates for task {task!r}{fix}")
    digest = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
    return pool[int.from_bytes(digest[:8], "big") % len(pool)]


def render_for_record(record: dict, seed: int, template_id: str | None = None,
                      brevity: str | None = None) -> tuple[InstructionTemplate, list[dict]]:
    """The template render draws for this record (or the one pinned; `@SET` draws from a template set), and
    the conversation it gives; `brevity` (short, long or none) draws among the templates of that label.

    A record that is already a conversation (LLaVA-Instruct's `messages`) takes no template, as
    InstructBLIP uses it: it passes through under the id 'native'."""
    pinned = template_id and not template_id.startswith(SET_MARK)
    if record.get("messages") is not None and not pinned:
        native = InstructionTemplate("native", record["task"], record["lang"], "none", "", "", draw=False)
        return native, [dict(m) for m in record["messages"]]
    set_name = template_id[len(SET_MARK):] if template_id and not pinned else DEFAULT_SET
    template = template_by_id(template_id) if pinned else choose_template(
        record["task"], record["lang"], record["id"], seed, set_name, brevity)
    messages = template.render(record)
    frames = record.get("frames")
    if frames:  # a video's sampled frames stand, in order, where the template puts its one image
        messages[0]["content"] = messages[0]["content"].replace("<image>", "<image>" * len(frames), 1)
    return template, messages


def reload_templates() -> None:
    """Forget the task files read so far (after TASKS_DIR, a user folder or a file in them changed)."""
    for cached in (load_task_templates, template_pool, _load_file, template_set, set_templates):
        cached.cache_clear()
