"""`loom templates lint|preview|stats`: checks, rendered examples and figures for template authors."""
from __future__ import annotations

import difflib
import random
import tempfile
from pathlib import Path

from jobs.config import ConfigError, load_config


def sample_records(task: str, lang: str, count: int, seed: int, config: str | None = None,
                   dataset: str | None = None, scratch: str | Path | None = None) -> list[dict]:
    """`count` canonical records of `task` in `lang`: from the datasets a render config names (optionally one
    card or adapter), or, without a config, from the shapes-world fixtures of the task's datasets, written
    into `scratch` (which the caller removes)."""
    if config:
        from jobs.render import read_records, render_settings

        records = []
        for entry in render_settings(load_config(config, tempfile.gettempdir()))["datasets"]:
            if dataset in (None, entry.get("card"), entry.get("adapter")):
                records += [r for r in read_records(entry) if r["task"] == task and r["lang"] == lang]
        if not records:
            raise ConfigError(f"{config}: render.datasets gives no {lang} {task} record"
                              + (f" from {dataset}" if dataset else ""))
    else:
        records = _shapes_world_records(task, lang, count, seed, Path(scratch or tempfile.mkdtemp(prefix="loom-preview-")))
        if dataset:
            records = [r for r in records if r["dataset"] == dataset]
    random.Random(seed).shuffle(records)
    return records[:count]


def _shapes_world_records(task: str, lang: str, count: int, seed: int, folder: Path) -> list[dict]:
    """Records of every dataset of `task` from their shapes-world fixtures (English; for another language
    the same records labelled so, which shows that language's templates around English fields), or Chinese
    captions of shapes-world scenes for Chinese captioning."""
    if not (task == "captioning" and lang == "zh"):
        from catalog.cards import load_cards, select_cards
        from pipelines.shapes_world.formats.samples import sample_records as fixture_records

        names = sorted(select_cards(load_cards(), kind="dataset", task=task))
        records = [{**r, "lang": lang} for name in names for r in fixture_records(name, folder)]
        if records:
            return records
    if task == "captioning" and lang == "zh":
        from pipelines.shapes_world.draw import draw_scene, encode_jpeg
        from pipelines.shapes_world.scenes import captions, make_scene

        records = []
        for i in range(count):
            rng = random.Random(f"loom-preview/{seed}/{i}")
            scene = make_scene(rng)
            image = folder / f"scene_{i:03d}.jpg"
            image.write_bytes(encode_jpeg(draw_scene(scene)))
            records.append({"id": f"shapes:{task}:{i}", "dataset": "shapes_world", "task": task, "split": "train",
                            "lang": lang, "image": {"path": str(image), "width": scene.width, "height": scene.height},
                            "caption": captions(scene, lang, rng, count=1)[0]})
        return records
    raise ConfigError(f"loom templates preview: no built-in shapes-world sample of {lang} {task} records; "
                      "pass --config with a render config whose render.datasets hold such a dataset")


def print_preview(task: str, lang: str, count: int, seed: int, chat: str, config: str | None,
                  dataset: str | None) -> None:
    from templates.authoring import TARGET_CLOSE, TARGET_OPEN, preview
    from templates.chat import get_chat_format

    try:
        chat_format = get_chat_format(chat)
    except ValueError as err:
        raise ConfigError(f"--chat: {err}") from err
    with tempfile.TemporaryDirectory(prefix="loom-preview-") as scratch:  # the fixtures' images go with it
        records = sample_records(task, lang, count, seed, config, dataset, scratch)
        for example in preview(records, chat_format, seed):
            print(example, end="\n\n")
    print(f"(in the {chat} chat format; the model is trained on the text between {TARGET_OPEN} and {TARGET_CLOSE})")
    if len(records) < count:
        print(f"(only {len(records)} {lang} {task} record(s) to show, of the {count} asked for"
              + (f": {dataset}'s sample holds no more)" if dataset else ")"))
    if lang != "en" and not config and not (task == "captioning" and lang == "zh"):
        print(f"(the shapes-world samples are English records labelled {lang}: the {lang} template wording is what "
              "this shows; --config draws your own records)")


def use_config_folders(config: str | None) -> None:
    """With --config: the run config's own template and card folders (templates.paths, catalog.paths) are
    read alongside Loom's, as `loom render` reads them."""
    if config:
        from jobs.user_folders import use_user_folders

        use_user_folders(load_config(config, tempfile.gettempdir()))


def print_stats(tokenizer: str | None, config: str | None = None) -> None:
    from templates.authoring import language_totals, template_stats

    use_config_folders(config)
    count_tokens = None
    if tokenizer:
        from tokenizers import Tokenizer

        path = Path(tokenizer)
        path = path / "tokenizer.json" if path.is_dir() else path
        if not path.is_file():
            raise ConfigError(f"--tokenizer: {tokenizer}: no tokenizer.json there")
        loaded = Tokenizer.from_file(str(path))
        count_tokens = lambda text: len(loaded.encode(text).ids)  # noqa: E731
    print(f"{'task':22} {'lang':4} {'templates':>9}  {'short/long/none':15}  prompt length (min/median/max)")
    rows = template_stats(count_tokens)
    for row in rows:
        b, n = row["brevity"], row["length"]
        lengths = f"{n['min']}/{n['median']:g}/{n['max']} {row['unit']}"
        if "tokens" in row:
            t = row["tokens"]
            lengths += f", {t['min']}/{t['median']:g}/{t['max']} tokens"
        print(f"{row['task']:22} {row['lang']:4} {row['templates']:>9}  {b['short']}/{b['long']}/{b['none']:<11}  {lengths}")
    for total in language_totals(rows):
        b = total["brevity"]
        print(f"{'all ' + str(total['tasks']) + ' tasks':22} {total['lang']:4} {total['templates']:>9}  "
              f"{b['short']}/{b['long']}/{b['none']}")
    from templates.brevity import paper_share

    print(f"(render draws brevity per dataset, exactly: render.brevity or an entry's brevity; by default the paper's "
          f"share for short-answer datasets, {paper_share('captioning'):.3f} for captions and {paper_share('vqa'):.3f} "
          "for question answering, 0 for the others; long wording only where a dataset's setting asks for it)")


BREVITY_WORDS = ("short", "brief", "concise", "single word", "three words", "few words", "one word", "a word")
BREVITY_WORDS_ZH = ("简短", "简要", "简洁", "一个词", "几个字", "三个词", "简单回答")
# what a `long` template asks for: a detailed answer (and a template not marked long must not ask for one)
LONG_WORDS = ("detail", "thorough", "at length", "as fully", "in-depth", "in depth", "comprehensive", "exhaustive",
              "elaborate")
LONG_WORDS_ZH = ("详细", "详尽", "细致", "全面", "完整")
NEAR_DUPLICATE_RATIO = 0.9  # difflib similarity of two prompts' word sequences
RECORDS_PER_DATASET = 8


def _words(prompt: str) -> list[str]:
    """A prompt as words (each Chinese character one), lowercased, without punctuation."""
    import re

    return re.findall(r"[\u3400-\u9fff]|[^\W_]+", prompt.lower())


def lint_templates(log=print, config: str | None = None) -> list[str]:
    """Every problem with the task templates (Loom's, and with `config` its templates.paths'), as
    lines naming the task, template and dataset.

    Each task of the catalog has 10-15 short and open templates per language that render may draw (and
    10-15 `long` ones where it has any); the English and Chinese ones ask for a short answer exactly
    when marked brevity short, and for a detailed one exactly when marked long; a task with
    short-answer datasets has both short and open wording; no two prompts of a task are near copies;
    and every dataset of the task, sampled from its shapes-world fixture through its adapter, renders
    with every drawable template, or (an evaluation-only dataset such as VSR's statements) with at
    least one pinned template. Every template, pinned ones included, is rendered under render's bounds
    (templates/sandbox.py): one that crosses a bound on any record is a problem, and so is a pinned
    template that renders no dataset of its task. A card of the user's has no shapes-world sample:
    its task's templates are rendered on the built-in datasets of that task."""
    from collections import defaultdict

    from catalog.cards import TASKS, load_cards, select_cards
    from pipelines.render import render_record
    from pipelines.shapes_world.formats.samples import SAMPLES, sample_records
    from templates.library import (CONVERSATION_TASKS, TemplateError, TemplateRefused, load_task_templates,
                                   task_files, task_names)

    use_config_folders(config)
    problems: list[str] = []
    cards = select_cards(load_cards(), kind="dataset")
    datasets = defaultdict(list)
    for name, card in sorted(cards.items()):
        for task in card["tasks"]:
            datasets[task].append(name)
    with tempfile.TemporaryDirectory(prefix="loom-lint-") as scratch:
        for task in TASKS:
            samples = {name: sample_records(name, scratch)[:RECORDS_PER_DATASET] for name in datasets[task]
                       if name in SAMPLES}
            unsampled = [name for name in datasets[task] if name not in SAMPLES]
            if unsampled:
                log(f"{task}: {', '.join(unsampled)}: your card(s), no shapes-world sample to render")
            if task in CONVERSATION_TASKS:
                for name, records in samples.items():
                    for record in records:
                        if render_record(record, seed=0)["template_id"] != "native":
                            problems.append(f"{task}: {name}: record {record['id']} did not pass through as a conversation")
                log(f"{task}: no templates (conversations used as they are): {', '.join(samples)}")
                continue
            try:
                templates = load_task_templates(task)
            except TemplateError as err:
                problems.append(f"{task}: {err}")
                continue
            problems += _lint_wording(task, templates, cards, datasets[task])
            problems += _lint_fields(templates, (task,))
            rendered = {t.id: [] for t in templates}  # the datasets each template renders
            first_error = {}
            for name, records in samples.items():
                outcome, over_limits = {}, set()
                for template in templates:
                    try:
                        for record in records:
                            render_record(record, seed=0, template_id=template.id)
                        outcome[template.id] = None
                        rendered[template.id].append(name)
                    except TemplateRefused as err:
                        outcome[template.id] = str(err)
                        if err.over_limits:  # hostile or runaway whatever the dataset: never a fit question
                            over_limits.add(template.id)
                            problems.append(f"{task}: template {template.id} crosses render's bounds on {name}: {err}")
                    except (TemplateError, KeyError, TypeError) as err:
                        outcome[template.id] = str(err)
                    if outcome[template.id]:
                        first_error.setdefault(template.id, f"on {name}: {outcome[template.id]}")
                drawable = [t.id for t in templates if t.draw]
                failing = [t for t in drawable if outcome[t]]
                if len(failing) < len(drawable):  # the drawn templates serve this dataset: all of them must
                    problems += [f"{task}: template {t} fails on {name}: {outcome[t]}" for t in failing
                                 if t not in over_limits]
                elif not any(error is None for error in outcome.values()):
                    problems.append(f"{task}: no template renders {name} (first error: {outcome[drawable[0]]})")
            if samples:  # a pinned template is used only where a render entry names it: it must fit some dataset
                problems += [f"{task}: pinned template {t.id} renders no dataset of its task "
                             f"({', '.join(samples)}); first error {first_error.get(t.id)}"
                             for t in templates if not t.draw and not rendered[t.id]]
            langs = sorted({t.lang for t in templates})
            log(f"{task}: {len(templates)} templates ({', '.join(langs)}; {sum(not t.draw for t in templates)} "
                f"pinned for evaluation), rendered on {', '.join(samples) or 'no dataset'}")
    problems += [f"{task}: templates for a task no record has ({', '.join(map(str, task_files(task)))}); tasks: "
                 f"{', '.join(TASKS)}" for task in task_names() if task not in TASKS]
    problems += _lint_set_fields()
    return problems


def _lint_fields(templates, tasks: tuple[str, ...], where: str = "") -> list[str]:
    """A template that prints a field no record of its task(s) has (catalog/records.py's TASK_FIELDS):
    it would fail on every record, or print nothing where render fills the field in empty."""
    from catalog.records import template_fields

    allowed = list(dict.fromkeys(name for task in tasks for name in template_fields(task)))
    return [f"{where or tasks[0]}: template {t.id} uses field(s) {', '.join(sorted(set(t.fields) - set(allowed)))} "
            f"that a {' or '.join(tasks)} record does not have; its fields: {', '.join(allowed)}"
            for t in templates if set(t.fields) - set(allowed)]


def _lint_set_fields() -> list[str]:
    """`_lint_fields` for the named template sets: a set's file serves every task it covers, so its templates
    may print a field any one of them has."""
    from templates.library import DEFAULT_SET, set_templates, template_set, template_sets

    problems = []
    for name in template_sets():
        if name == DEFAULT_SET:
            continue
        served: dict[str, list[str]] = {}
        for task, file in template_set(name)["covers"].items():
            served.setdefault(file, []).append(task)
        for file, tasks in served.items():
            problems += _lint_fields(set_templates(name, tasks[0]), tuple(tasks), f"template set {name} ({file})")
    return problems


def _lint_wording(task, templates, cards, names) -> list[str]:
    problems = []
    short_answer = [n for n in names if (cards[n].get("instructblip") or {}).get("short_answer")]
    for lang in sorted({t.lang for t in templates}):
        drawable = [t for t in templates if t.lang == lang and t.draw]
        detailed = [t for t in drawable if t.brevity == "long"]
        if not 10 <= len(drawable) - len(detailed) <= 15:
            problems.append(f"{task}: {len(drawable) - len(detailed)} short and open {lang} templates to draw from; "
                            "expected 10-15")
        if detailed and not 10 <= len(detailed) <= 15:
            problems.append(f"{task}: {len(detailed)} long {lang} templates to draw from; expected 10-15 (or none)")
        if short_answer and not (any(t.brevity == "short" for t in drawable)
                                 and any(t.brevity != "short" for t in drawable)):
            problems.append(f"{task}: short-answer datasets ({', '.join(short_answer)}) need both short and open "
                            f"{lang} wording")
        for i, a in enumerate(drawable):
            for b in drawable[i + 1:]:
                ratio = difflib.SequenceMatcher(None, _words(a.prompt), _words(b.prompt)).ratio()
                if ratio >= NEAR_DUPLICATE_RATIO:
                    problems.append(f"{task}: templates {a.id} and {b.id} are near copies ({ratio:.2f} similar)")
    for t in templates:
        if t.lang not in ("en", "zh"):
            continue
        short_words, long_words = (BREVITY_WORDS, LONG_WORDS) if t.lang == "en" else (BREVITY_WORDS_ZH, LONG_WORDS_ZH)
        for label, words, what in (("short", short_words, "a short answer"), ("long", long_words, "a detailed answer")):
            asks = any(word in t.prompt.lower() for word in words)
            if asks != (t.brevity == label):
                problems.append(f"{task}: template {t.id} is marked brevity {t.brevity} but its wording "
                                f"{'asks' if asks else 'does not ask'} for {what}")
    return problems
