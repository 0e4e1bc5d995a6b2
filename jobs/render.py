"""`loom render`: pairs and native annotation files → instruction records, through the templates."""
from __future__ import annotations

import collections
import os
import time
from pathlib import Path

from jobs.config import ConfigError, require, section
from pipelines.manifest import (StageRecord, input_fingerprint, is_complete, manifest_hash, read_manifest,
                                start_or_resume)
from pipelines.mixture import draw
from pipelines.render import IMAGES_FOLDER, collector_paused, part_name, render_part
from pipelines.render_pairs import part_rows, part_starts, plan_parts, render_pairs_part, shard_rows
from templates.library import TemplateError, template_by_id


# The render section's keys, types and defaults: jobs/schema.py's Render.
# render.ray: "auto" renders on Ray when a cluster is named or the work is several tasks big enough to
# share out, in this process otherwise (a local Ray's start, seconds, would dwarf rendering a few
# thousand records): several tasks (a task per dataset, or per part of a pairs entry) whose input files
# add up to more than this
RAY_AUTO_BYTES = 64 * 2**20

# adapter name -> (the keys an entry must give, the keys it may give)
ADAPTERS = {
    "pairs": ({"path"}, {"split", "limit", "template", "brevity"}),
    "coco_captions": ({"annotations", "images"}, {"split", "limit", "template", "lang", "brevity"}),
    "vqav2": ({"questions", "images"}, {"annotations", "split", "limit", "template", "lang", "brevity"}),
    # your own table (catalog/adapters/generic.py): jsonl, json, parquet, csv or a datasets folder at `path`,
    # or a dataset datasets.load_dataset reads by name (`hub`, with hub_config and hub_split)
    "generic": ({"task"}, {"path", "hub", "hub_config", "hub_split", "columns", "name", "image_root", "lang",
                           "format", "split", "limit", "template", "brevity"}),
}
# the card whose defaults (brevity) an entry of a built-in adapter takes
ADAPTER_CARDS = {"coco_captions": "coco_caption", "vqav2": "vqav2"}


# keys every entry may give besides its adapter's own
ENTRY_OPTIONS = {"split", "limit", "template", "lang", "brevity"}  # lang: the language of a file's text (default en)
BREVITY_HELP = "expected a share of records in [0, 1] asked for a short answer, or {short: S, long: L} with S + L <= 1"


def card_adapter(name: str, where: str):
    """The reader a dataset card names, and its parameters other than `split` (name -> required)."""
    import importlib
    import inspect

    from catalog.cards import UnknownCardError, get_card

    try:
        card = get_card(name)
    except UnknownCardError as err:
        raise ConfigError(f"{where}.card: {err}") from err
    require(card.get("adapter"), f"{where}.card: {name} has no adapter yet in this version of Loom "
            "(`loom catalog list --kind dataset` marks them)")
    module, _, function = card["adapter"].rpartition(".")
    reader = getattr(importlib.import_module(module), function)
    parameters = {p.name: p.default is inspect.Parameter.empty
                  for p in inspect.signature(reader).parameters.values() if p.name != "split"}
    return card, reader, parameters


def _check_card_entry(entry: dict, where: str) -> None:
    card, _, parameters = card_adapter(entry["card"], where)
    missing = sorted(name for name, required in parameters.items() if required and name not in entry)
    require(not missing, f"{where}: missing key(s) {missing} for card {entry['card']} "
            f"(its adapter {card['adapter']} reads them)")
    unknown = set(entry) - set(parameters) - ENTRY_OPTIONS - {"card"}
    require(not unknown, f"{where}: unknown key(s) {sorted(unknown)}; card {entry['card']} takes "
            f"{sorted(parameters)} and {sorted(ENTRY_OPTIONS)}")
    # A card whose records fit only one template (VSR's statements) says so; without it the entry would
    # fail record by record, deep in rendering, on a field the drawn templates ask for
    required = card.get("requires_template")
    require(not required or entry.get("template") == required,
            f"{where}: card {entry['card']} renders only through template {required} "
            f"(its records fit no other); give the entry `template: {required}`"
            + (f", not {entry['template']!r}" if entry.get("template") else ""))
    from templates.library import CONVERSATION_TASKS, load_task_templates

    lang = entry_lang(entry)
    for task in set(card["tasks"]) - set(CONVERSATION_TASKS):
        try:
            templates = load_task_templates(task)
        except TemplateError as err:
            raise ConfigError(f"{where}: card {entry['card']} is a {task} dataset: {err}") from err
        languages = sorted({t.lang for t in templates if t.draw})
        require(entry.get("template") or lang in languages,
                f"{where}.lang: {lang!r}; task {task} has templates in {languages} only: render this file in one "
                "of them, or pin a template")


def entry_lang(entry: dict) -> str | None:
    """The language an entry's records are labelled with: its `lang`, else its card's one language where that
    is not English (a card of your own for a Chinese file in VQAv2's format); None: what the adapter reads
    (English for a card's native format, a generic table's own `lang` column)."""
    if entry.get("lang"):
        return entry["lang"]
    if "card" in entry:
        from catalog.cards import card_languages, get_card

        languages = card_languages(get_card(entry["card"]))
        return languages[0] if len(languages) == 1 else "en"
    return None


def _check_mixture(cfg: dict) -> None:
    """A held-out dataset never enters the training mixture (its keys' types and ranges: jobs/schema.py)."""
    if cfg["mixture"] is None:
        return
    for i, entry in enumerate(cfg["datasets"]):
        if "card" in entry and entry.get("split", "train") == "train":
            from catalog.cards import get_card

            require(get_card(entry["card"])["held"] != "held-out",
                    f"render.datasets[{i}]: {entry['card']} is held out in InstructBLIP (zero-shot evaluation); "
                    "it cannot enter the training mixture: render it with split val or test, or leave out render.mixture")


def in_mixture(entry: dict, cfg: dict) -> bool:
    """Whether an entry's records are reweighted into the training mixture."""
    return cfg["mixture"] is not None and entry.get("split", "train") == "train" and entry.get("adapter") != "pairs"


def render_section(config: dict) -> dict:
    """The render section, with the config's template and card folders (templates.paths, catalog.paths, or
    their older names render.template_paths, render.catalog_paths) checked and read alongside Loom's own;
    the section keeps them as template_paths and catalog_paths, which its Ray workers read again."""
    from jobs.user_folders import use_user_folders

    cfg = section(config, "render")
    folders = use_user_folders(config)
    cfg["template_paths"], cfg["catalog_paths"] = folders["templates"], folders["catalog"]
    return cfg


def dataset_name(entry: dict) -> str:
    """The dataset an entry renders, as render.brevity names it: its card, a generic entry's `name` (else
    its file's stem or its hub name's last part), or its adapter (`pairs`)."""
    if "card" in entry:
        return entry["card"]
    if entry["adapter"] == "generic":
        return entry.get("name") or (Path(entry["path"]).stem if entry.get("path")
                                     else str(entry.get("hub", "")).rstrip("/").rpartition("/")[2])
    return entry["adapter"]


# entry keys whose value may name a folder that holds no image a record points into: a table or a saved
# datasets folder, a dataset repository read by name, and the records' dataset name (a folder of that name
# in the working directory is no image root)
NOT_IMAGE_FOLDERS = {"path", "hub", "name"}


def image_roots(cfg: dict) -> dict[str, str]:
    """The image folders the entries read (every value naming a folder: `images`, `image_root`, a card's
    image directory), each under a name their records' references use ({root: NAME, path: relative}): the
    dataset's name, `NAME.KEY` for an entry's second folder, `NAME.SPLIT` (or a number) where two entries of
    one dataset read different folders. The render manifest keeps them; train can re-point any of them."""
    roots: dict[str, str] = {}
    for entry in cfg["datasets"]:
        if entry.get("adapter") == "pairs":  # ingest's shards: inside the run folder, or absolute
            continue
        folders = [(key, value) for key, value in entry.items()
                   if key not in NOT_IMAGE_FOLDERS and isinstance(value, str) and Path(value).is_dir()]
        for n, (key, folder) in enumerate(folders):
            folder = str(Path(folder).resolve())
            name = dataset_name(entry) if n == 0 else f"{dataset_name(entry)}.{key}"
            if roots.get(name, folder) != folder:
                name = f"{name}.{entry.get('split', 'train')}"
            suffix, base = 2, name
            while roots.get(name, folder) != folder:
                name, suffix = f"{base}.{suffix}", suffix + 1
            roots[name] = folder
    return roots


def recorded_roots(roots: dict[str, str], out: Path) -> dict[str, str]:
    """The named image folders as the render manifest keeps them: one inside the run folder `out` relative
    to it (`demo/coco/train2014`, so it moves with the run), any other as its absolute path."""
    run = out.resolve()
    return {name: Path(folder).relative_to(run).as_posix() if Path(folder).is_relative_to(run) else folder
            for name, folder in roots.items()}


def entry_tasks(entry: dict) -> list[str]:
    """The tasks of an entry's records, known before reading them."""
    if "card" in entry:
        from catalog.cards import get_card

        return list(get_card(entry["card"])["tasks"])
    if entry["adapter"] == "generic":
        return ["llava_instruct" if entry["task"] == "conversation" else entry["task"]]
    return {"pairs": ["captioning"], "coco_captions": ["captioning"], "vqav2": ["vqa"]}[entry["adapter"]]


def _brevity_value(value, where: str) -> dict[str, float]:
    """A brevity setting as {short, long} shares."""
    def share(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1

    if share(value):
        return {"short": float(value), "long": 0.0}
    require(isinstance(value, dict) and value and not set(value) - {"short", "long"}
            and all(share(v) for v in value.values()), f"{where}: {value!r}; {BREVITY_HELP}")
    shares = {"short": float(value.get("short", 0)), "long": float(value.get("long", 0))}
    require(shares["short"] + shares["long"] <= 1 + 1e-9, f"{where}: {value!r}: the shares add up to more than 1; "
            f"{BREVITY_HELP}")
    return shares


def entry_brevity(i: int, entry: dict, cfg: dict) -> dict | None:
    """The brevity entry `i` is rendered with: {short, long, from} (where the shares come from: the entry,
    render.brevity, its card's short answers, or the default 0), or None where its records take no drawn
    template (a pinned one, or conversations)."""
    from catalog.cards import get_card
    from pipelines.render import template_pinned
    from templates.brevity import paper_share
    from templates.library import CONVERSATION_TASKS

    where, name = f"render.datasets[{i}].brevity", dataset_name(entry)
    conversation = set(entry_tasks(entry)) <= set(CONVERSATION_TASKS)
    if template_pinned(entry.get("template")) or conversation:
        why = (f"it pins template {entry.get('template')}, whose wording is its own" if not conversation else
               "its records are conversations, which take no template")
        require("brevity" not in entry, f"{where}: {entry.get('brevity')!r}, but {why}; leave brevity out")
        return None
    if "brevity" in entry:
        return {**_brevity_value(entry["brevity"], where), "from": "entry"}
    if name in cfg["brevity"]:
        return {**_brevity_value(cfg["brevity"][name], f"render.brevity.{name}"), "from": "render.brevity"}
    card = entry.get("card") or ADAPTER_CARDS.get(entry["adapter"])
    task = entry_tasks(entry)[0]
    if entry.get("adapter") == "pairs" or (card and (get_card(card).get("instructblip") or {}).get("short_answer")):
        return {"short": paper_share(task), "long": 0.0, "from": f"the paper's share for {task} (short answers)"}
    return {"short": 0.0, "long": 0.0, "from": "default (answers not marked short)"}


def _check_brevity(cfg: dict) -> None:
    """render.brevity names the datasets of render.datasets; every entry's brevity has templates to draw."""
    require(isinstance(cfg["brevity"], dict), f"render.brevity: {cfg['brevity']!r}; expected dataset: share")
    names = [dataset_name(entry) for entry in cfg["datasets"]]
    unknown = sorted(set(cfg["brevity"]) - set(names))
    require(not unknown, f"render.brevity: {unknown} not among render.datasets' datasets ({', '.join(names)}); "
            "name a card, a generic entry's name, or pairs")
    from templates.library import template_pool

    for i, entry in enumerate(cfg["datasets"]):
        brevity = entry_brevity(i, entry, cfg)
        if brevity is None:
            continue
        lang = entry_lang(entry) or "en"  # a generic entry's per-row languages are checked as its rows are read
        for label in ("short", "long", "none"):
            share = brevity[label] if label != "none" else 1 - brevity["short"] - brevity["long"]
            for task in entry_tasks(entry):
                try:
                    has = bool(template_pool(task, lang, cfg["template_set"], label))
                except TemplateError:
                    continue  # a task without templates is named by the entry's own check
                require(has or share < 1e-9,
                        f"render.datasets[{i}] ({dataset_name(entry)}): a brevity share of {share:g} for {label} "
                        f"({brevity['from']}), but task {task} has no {label}-worded {lang} templates; set "
                        f"render.brevity.{dataset_name(entry)} (or the entry's brevity) to leave {label} at 0, or "
                        "add such templates (templates.paths)")


def render_settings(config: dict) -> dict:
    cfg = render_section(config)
    for i, entry in enumerate(cfg["datasets"]):
        where = f"render.datasets[{i}]"
        if isinstance(entry, dict) and "card" in entry:  # any dataset whose card names an adapter
            _check_card_entry(entry, where)
            if entry.get("template"):
                try:
                    template_by_id(entry["template"])
                except TemplateError as err:
                    raise ConfigError(f"{where}.template: {err}") from err
            continue
        require(isinstance(entry, dict) and entry.get("adapter") in ADAPTERS,
                f"{where}: adapter {entry.get('adapter') if isinstance(entry, dict) else entry!r}; "
                f"expected one of {sorted(ADAPTERS)}")
        required, optional = ADAPTERS[entry["adapter"]]
        missing = required - set(entry)
        require(not missing, f"{where}: missing key(s) {sorted(missing)} for adapter {entry['adapter']}")
        unknown = set(entry) - required - optional - {"adapter"}
        require(not unknown, f"{where}: unknown key(s) {sorted(unknown)}; adapter {entry['adapter']} "
                f"takes {sorted(required | optional)}")
        require(entry["adapter"] != "generic" or ("path" in entry) != ("hub" in entry),
                f"{where}: give `path` (a jsonl, json, parquet or csv file, or a saved datasets folder) or `hub` "
                "(a name for datasets.load_dataset: a Hub dataset or a local dataset repository folder), one of them")
        if entry.get("template"):
            try:
                template_by_id(entry["template"])
            except TemplateError as err:
                raise ConfigError(f"{where}.template: {err}") from err
    _check_mixture(cfg)
    from templates.library import template_sets

    require(cfg["template_set"] in template_sets(),
            f"render.template_set: {cfg['template_set']!r}; expected one of {', '.join(template_sets())} "
            "(templates/sets/ holds each named set)")
    _check_brevity(cfg)
    return cfg


def read_records(entry: dict) -> list[dict]:
    """Canonical records of one configured dataset, through its adapter."""
    split = entry.get("split", "train")
    if "card" in entry:
        _, reader, parameters = card_adapter(entry["card"], "render.datasets")
        records = reader(**{name: entry[name] for name in parameters if name in entry}, split=split)
    elif entry["adapter"] == "pairs":  # every record at once: `loom render` reads a pairs entry in parts instead
        from catalog.adapters.pairs import read_pairs

        records = read_pairs(entry["path"], split, limit=entry.get("limit") or None)
    elif entry["adapter"] == "generic":
        from catalog.adapters.generic import read_generic

        records = read_generic(entry.get("path"), entry["task"], entry.get("columns"), entry.get("name"),
                               entry.get("image_root"), entry.get("lang"), entry.get("format"), split,
                               entry.get("hub"), entry.get("hub_config"), entry.get("hub_split"))
    elif entry["adapter"] == "coco_captions":
        from catalog.adapters.coco_captions import read_coco_captions

        records = read_coco_captions(entry["annotations"], entry["images"], split)
    else:
        from catalog.adapters.vqav2 import read_vqav2

        records = read_vqav2(entry["questions"], entry.get("annotations"), entry["images"], split)
    records = records[: entry["limit"]] if entry.get("limit") else records
    lang = entry_lang(entry)
    if entry.get("lang") or ("card" in entry and lang != "en"):  # a file in another language than its format's
        for record in records:  # (a Chinese VQAv2-format file, given `lang: zh` or a card of its own saying so)
            record["lang"] = lang
    return records


def _input_fingerprints(cfg: dict) -> dict[str, str]:
    inputs = {}
    for entry in cfg["datasets"]:
        if "card" in entry:  # the annotation files it names (image folders are read, not fingerprinted)
            for name in card_adapter(entry["card"], "render.datasets")[2]:
                value = entry.get(name)
                if isinstance(value, str) and Path(value).is_file():
                    inputs[value] = input_fingerprint(value)
        elif entry["adapter"] == "pairs":
            if read_manifest(entry["path"]) is None:
                raise ConfigError(f"render.datasets: {entry['path']}: no finished ingest output there "
                                  "(manifest.json missing); run `loom ingest` first")
            inputs[entry["path"]] = manifest_hash(entry["path"])
        elif entry.get("hub") and not Path(entry["hub"]).is_dir():
            # a Hub name: its cached files are the datasets library's; a changed repository is not noticed
            split = entry.get("hub_split") or entry.get("split", "train")
            inputs[f"hub:{entry['hub']}"] = f"{entry.get('hub_config')}/{split}"
        else:
            for key in ("annotations", "questions", "path", "hub"):
                value = entry.get(key)
                if value and Path(value).is_dir():  # a datasets folder: every file in it
                    for file in sorted(p for p in Path(value).rglob("*") if p.is_file()):
                        inputs[str(file)] = input_fingerprint(file)
                elif value:
                    fingerprint = input_fingerprint(value)
                    if fingerprint is None:
                        raise ConfigError(f"render.datasets: {value}: no such file")
                    inputs[value] = fingerprint
    return inputs


def _source(entry: dict) -> str:
    """What an entry renders: its card, or its built-in adapter."""
    return entry.get("card") or entry["adapter"]


def _shown(entry: dict) -> str:
    """An entry as the log names it: its card or adapter, and a generic entry's dataset name."""
    return f"generic {dataset_name(entry)}" if entry.get("adapter") == "generic" else _source(entry)


def _stem(i: int, entry: dict) -> str:
    """The name every file of entry `i` starts with: `03-vqav2-val`."""
    return f"{i:02d}-{_source(entry)}-{entry.get('split', 'train')}"


def drawing(entry: dict, cfg: dict) -> dict:
    """The entry as render draws its records: its pinned template, else from render.template_set."""
    from templates.library import DEFAULT_SET, SET_MARK

    if entry.get("template") or cfg["template_set"] == DEFAULT_SET:
        return entry
    return {**entry, "template": SET_MARK + cfg["template_set"]}


def use_folders(folders: tuple[tuple, tuple]) -> None:
    """In a Ray worker (a no-op where they are read already): the user's template and card folders."""
    from catalog.cards import use_card_folders
    from templates.library import use_template_folders

    use_template_folders(folders[0])
    use_card_folders(folders[1])


def _folders(cfg: dict) -> tuple[tuple, tuple]:
    return tuple(cfg["template_paths"]), tuple(cfg["catalog_paths"])


def render_entry(i: int, entry: dict, records: list[dict] | None, count: int | None, seed: int,
                 part_records: int, folder: str, brevity: dict | None = None,
                 folders: tuple[tuple, tuple] = ((), ()), roots: dict[str, str] | None = None) -> dict:
    """Ray task (or a plain call): one configured dataset's records (read here when None), drawn to
    `count` for the training mixture, rendered into parts of `part_records`; rows in and every part.
    `brevity` ({short, long} shares, from `entry_brevity`) is realised exactly over the records drawn;
    image references are written relative to the run folder or to one of `roots` (`image_roots`)."""
    use_folders(folders)
    started = time.perf_counter()
    if records is None:
        with collector_paused():
            records = read_records(entry)
    read_seconds = time.perf_counter() - started
    if count is not None and records:
        picks = draw([r["id"] for r in records], count, seed + i)
        drawn = [records[k] if rep == 0 else {**records[k], "id": f"{records[k]['id']}#{rep}"} for k, rep in picks]
    else:
        drawn = records
    chunks = [drawn[k:k + part_records] for k in range(0, len(drawn), part_records)] or [[]]
    worded = brevity_draw(i, entry, brevity, len(drawn), seed)
    parts = []
    for n, chunk in enumerate(chunks):
        name = part_name(_stem(i, entry), n, len(chunks))
        parts.append((name, render_part(chunk, seed, entry.get("template"), str(Path(folder) / name), worded,
                                        n * part_records, roots)))
    return {"rows_in": len(records), "rows_drawn": len(drawn), "parts": parts,
            "seconds": {"read": read_seconds, "render_and_write": time.perf_counter() - started - read_seconds}}


def brevity_draw(i: int, entry: dict, brevity: dict | None, total: int, seed: int):
    """The BrevityDraw of entry `i`'s `total` records (None where its records take no drawn template)."""
    from templates.brevity import BrevityDraw

    return None if brevity is None else BrevityDraw(brevity["short"], brevity["long"], total, seed, _stem(i, entry))


def entry_size(entry: dict, folders: tuple[tuple, tuple] = ((), ())) -> tuple[str | None, int]:
    """Ray task: the dataset an entry's records belong to, and how many there are (to plan the mixture)."""
    use_folders(folders)
    with collector_paused():
        records = read_records(entry)
    return (records[0]["dataset"] if records else None), len(records)


def _input_bytes(cfg: dict) -> int:
    """Bytes of the annotation files (or ingest folders) the entries read: how big the stage is, before reading."""
    total = 0
    for entry in cfg["datasets"]:
        for value in entry.values():
            path = Path(value) if isinstance(value, str) else None
            if path is not None and path.is_file():
                total += path.stat().st_size
            elif path is not None and entry.get("adapter") == "pairs" and path.is_dir():
                total += sum(f.stat().st_size for f in path.rglob("*.parquet"))
    return total


def run_render(config: dict, out: str | Path, log=print, ray_address: str | None = None) -> dict:
    """Run (or skip, or resume) the render stage into `out/render`; return its manifest."""
    cfg = render_settings(config)
    stage_dir = Path(out) / "render"
    inputs = _input_fingerprints(cfg)
    if is_complete(stage_dir, cfg, inputs):
        log(f"render: complete in {stage_dir} (same config and inputs); skipped")
        return read_manifest(stage_dir)
    record = StageRecord("render", cfg, inputs)
    plans = _pairs_plans(cfg)
    tasks = len(cfg["datasets"]) - len(plans) + sum(len(plan) for plan in plans.values())
    on_ray = cfg["ray"] == "always" or (cfg["ray"] == "auto" and bool(
        ray_address or os.environ.get("RAY_ADDRESS") or (tasks > 1 and _input_bytes(cfg) > RAY_AUTO_BYTES)))
    # a killed run of this config on these inputs left whole parts behind: keep them (a pairs part found
    # written is counted, not rendered again); any other run's files go
    start_or_resume(stage_dir, {"config": cfg, "inputs": inputs})
    started = time.perf_counter()
    roots = image_roots(cfg)  # the named image folders every entry's {root, path} references use
    if on_ray:
        results, mixture_report = _render_on_ray(cfg, plans, stage_dir, roots, ray_address, log)
    else:
        results, mixture_report = _render_here(cfg, plans, stage_dir, roots, log)
    # seconds by phase, added up over the tasks (on Ray they overlap); "stage" is the wall time
    phases = {phase: round(sum(r["seconds"][phase] for r in results), 2) for phase in ("read", "render_and_write")}
    phases["stage"] = round(time.perf_counter() - started, 2)

    files, per_dataset, templates_used, dropped_examples, brevity_report = [], {}, collections.Counter(), {}, {}
    for i, (entry, result) in enumerate(zip(cfg["datasets"], results)):
        record.rows_in += result["rows_in"]
        rows, dropped, worded = 0, collections.Counter(), collections.Counter()
        for name, summary in result["parts"]:
            files.append(f"instructions/{name}")
            rows += summary["rows"]
            templates_used.update(summary["templates"])
            worded.update(summary["brevity"])
            dropped.update(summary["dropped"])  # records a template refused: left out, never the stage
            for reason, message in summary["dropped_examples"].items():
                dropped_examples.setdefault(reason, message)
            per_dataset[name] = {"adapter": _source(entry), "split": entry.get("split", "train"),
                                 "records": summary["rows"], "languages": dict(sorted(summary["languages"].items())),
                                 "brevity": dict(sorted(summary["brevity"].items()))}
        brevity_report[_stem(i, entry)] = _brevity_report(i, entry, cfg, rows, worded, result["rows_drawn"])
        record.rows_out += rows
        for reason, count in dropped.items():
            record.drop(reason, count)
        refused = "; dropped " + ", ".join(f"{n} as {reason}" for reason, n in sorted(dropped.items())) if dropped else ""
        log(f"render: {_shown(entry)} ({entry.get('split', 'train')}): {rows} instruction records{refused}")
    record.extra.update(files=files, datasets=per_dataset, templates=dict(sorted(templates_used.items())),
                        brevity=brevity_report, phase_seconds=phases, on_ray=on_ray)
    log("render: brevity-worded " + ", ".join(f"{b['dataset']} {b['short']}/{b['records']}"
                                             + (f" (+{b['long']} long)" if b["long"] else "")
                                             for b in brevity_report.values()))
    # the folders records' {root, path} references are relative to; `train.image_roots` re-points a moved one
    record.extra["image_roots"] = recorded_roots(roots, Path(out))
    images = sorted(p.name for p in (stage_dir / IMAGES_FOLDER).glob("*.tar"))
    if images:  # the images datasets gave as bytes, which instruction records point into
        record.extra["image_files"] = [f"{IMAGES_FOLDER}/{name}" for name in images]
    if dropped_examples:  # the first refusal of each reason, naming its template and record
        record.extra["dropped_examples"] = dict(sorted(dropped_examples.items()))
    if mixture_report:
        record.extra["mixture"] = mixture_report
        log("render: mixture " + ", ".join(f"{d} {m['realised_share']:.3f} (target {m['target_share']:.3f})"
                                            for d, m in mixture_report.items()))
    return record.finish(stage_dir)


def _brevity_report(i: int, entry: dict, cfg: dict, rows: int, worded: collections.Counter, drawn: int) -> dict:
    """What the manifest says of one entry's brevity: records written, how many are short- and long-worded,
    the shares asked and where they come from, and the counts they make of the records drawn (the records
    a template refused, if any, are drawn but not written)."""
    brevity = entry_brevity(i, entry, cfg)
    report = {"dataset": dataset_name(entry), "records": rows, "short": worded.get("short", 0),
              "long": worded.get("long", 0)}
    if brevity is None:
        return {**report, "share_asked": None,
                "from": f"template {entry['template']}" if entry.get("template") else "conversations (no template)"}
    counts = brevity_draw(i, entry, brevity, drawn, cfg["seed"]).counts()
    return {**report, "share_asked": {"short": round(brevity["short"], 6), "long": round(brevity["long"], 6)},
            "from": brevity["from"], "asked": {"short": counts["short"], "long": counts["long"], "of": drawn}}


def _pairs_plans(cfg: dict) -> dict[int, list]:
    """The parts of every pairs entry (by its index): slices of its shard indexes, planned from their
    footers alone; `limit` cuts the plan, not a list of records."""
    return {i: plan_parts(shard_rows(entry["path"]), cfg["part_records"], entry.get("limit") or None)
            for i, entry in enumerate(cfg["datasets"]) if entry.get("adapter") == "pairs"}


def _pairs_part_calls(i: int, entry: dict, plan: list, cfg: dict, folder: str) -> list[tuple[str, tuple]]:
    """(file name, `render_pairs_part`'s arguments) of every part of pairs entry `i`, in shard order: each
    part knows where in the entry's stream of pairs it starts, so brevity is counted over the whole entry."""
    worded = brevity_draw(i, entry, entry_brevity(i, entry, cfg), sum(part_rows(part) for part in plan), cfg["seed"])
    calls = []
    for n, (part, first) in enumerate(zip(plan, part_starts(plan))):
        name = part_name(_stem(i, entry), n, len(plan))
        calls.append((name, (part, entry.get("split", "train"), cfg["seed"], entry.get("template"),
                             str(Path(folder) / name), worded, first, tuple(cfg["template_paths"]))))
    return calls


def _log_part(log, entry: dict, done: int, summary: dict, parts: int) -> None:
    if parts > 1:
        kept = " (written by an earlier run; kept)" if summary["kept"] else ""
        log(f"render: {_shown(entry)} ({entry.get('split', 'train')}): part {done}/{parts}{kept}")


def _pairs_result(plan: list, names: list[str], summaries: list[dict]) -> dict:
    """What `render_entry` returns, for a pairs entry rendered part by part."""
    return {"rows_in": sum(part_rows(part) for part in plan), "rows_drawn": sum(part_rows(part) for part in plan),
            "parts": [(name, {k: summary[k] for k in ("rows", "templates", "languages", "brevity", "dropped",
                                                      "dropped_examples")})
                      for name, summary in zip(names, summaries)],
            "seconds": {phase: sum(summary["seconds"][phase] for summary in summaries)
                        for phase in ("read", "render_and_write")}}


def _render_here(cfg: dict, plans: dict[int, list], stage_dir: Path, roots: dict[str, str],
                 log) -> tuple[list[dict], dict]:
    """Every entry but the pairs read, then drawn and rendered, in this process; a pairs entry part by part."""
    read, seconds = {}, {}
    for i, entry in enumerate(cfg["datasets"]):
        if i not in plans:
            started = time.perf_counter()
            with collector_paused():
                read[i] = read_records(entry)
            seconds[i] = time.perf_counter() - started
    sizes = [(None, 0) if i in plans else ((read[i][0]["dataset"] if read[i] else None), len(read[i]))
             for i in range(len(cfg["datasets"]))]  # a pairs entry is never in the mixture
    counts, report = _plan_mixture(cfg, sizes)
    folder = str(stage_dir / "instructions")
    results = []
    for i, entry in enumerate(cfg["datasets"]):
        if i in plans:
            calls = _pairs_part_calls(i, drawing(entry, cfg), plans[i], cfg, folder)
            summaries = []
            for _, arguments in calls:
                summaries.append(render_pairs_part(*arguments))
                _log_part(log, entry, len(summaries), summaries[-1], len(calls))
            results.append(_pairs_result(plans[i], [name for name, _ in calls], summaries))
        else:
            result = render_entry(i, drawing(entry, cfg), read.pop(i), counts.get(i), cfg["seed"], cfg["part_records"],
                                  folder, entry_brevity(i, entry, cfg), _folders(cfg), roots)
            result["seconds"]["read"] = seconds[i]
            results.append(result)
    return results, report


def _render_on_ray(cfg: dict, plans: dict[int, list], stage_dir: Path, roots: dict[str, str],
                   ray_address: str | None, log) -> tuple[list[dict], dict]:
    """A Ray task per entry reads, draws, renders and writes it, and a task per part of a pairs entry its
    part: records never leave the worker that read them (shipping them costs more than reading them). A
    mixture first sizes every entry in Ray tasks, so its annotation files are read twice; the driver holds
    no records either way, only the pairs plans and what each part holds."""
    from jobs.ray_runtime import ray_session

    folder = str(stage_dir / "instructions")
    with ray_session(ray_address) as ray:
        counts, report = {}, {}
        mixed = [i for i, entry in enumerate(cfg["datasets"]) if in_mixture(entry, cfg)]
        if mixed:
            size_task = ray.remote(entry_size)
            sized = ray.get([size_task.remote(cfg["datasets"][i], _folders(cfg)) for i in mixed])
            sizes = [(None, 0)] * len(cfg["datasets"])
            for i, size in zip(mixed, sized):
                sizes[i] = size
            counts, report = _plan_mixture(cfg, sizes)
        entry_task, part_task = ray.remote(render_entry), ray.remote(render_pairs_part)
        entry_refs, part_of, calls = {}, {}, {}
        for i, entry in enumerate(cfg["datasets"]):
            if i in plans:
                calls[i] = _pairs_part_calls(i, drawing(entry, cfg), plans[i], cfg, folder)
                part_of.update({part_task.remote(*arguments): (i, n) for n, (_, arguments) in enumerate(calls[i])})
            else:
                entry_refs[i] = entry_task.remote(i, drawing(entry, cfg), None, counts.get(i), cfg["seed"],
                                                  cfg["part_records"], folder, entry_brevity(i, entry, cfg),
                                                  _folders(cfg), roots)
        log(f"render: {len(cfg['datasets'])} dataset(s) on Ray, {len(entry_refs) + len(part_of)} task(s)")
        summaries = {i: [None] * len(plan) for i, plan in plans.items()}
        done = collections.Counter()
        pending = list(part_of)
        while pending:  # the pairs parts, logged as they finish
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)
            for ref in ready:
                i, n = part_of[ref]
                summaries[i][n] = ray.get(ref)
                done[i] += 1
                _log_part(log, cfg["datasets"][i], done[i], summaries[i][n], len(plans[i]))
        results = []
        for i in range(len(cfg["datasets"])):
            if i in plans:
                results.append(_pairs_result(plans[i], [name for name, _ in calls[i]], summaries[i]))
            else:
                results.append(ray.get(entry_refs[i]))
        return results, report


def _plan_mixture(cfg: dict, sizes: list[tuple[str | None, int]]) -> tuple[dict[int, int], dict]:
    """Records to draw from each training entry (by its index), and the report of target against realised
    shares; `sizes` holds each entry's (dataset, record count)."""
    from pipelines.mixture import plan_counts, target_shares

    of_dataset: dict[str, int] = collections.Counter()
    for entry, (dataset, size) in zip(cfg["datasets"], sizes):
        if in_mixture(entry, cfg) and size:
            of_dataset[dataset] += size
    if not of_dataset:
        return {}, {}
    mixture = cfg["mixture"]
    shares = target_shares(dict(of_dataset), mixture["weighting"], mixture["adjustments"])
    total = mixture["total"] or sum(of_dataset.values())
    counts = plan_counts(shares, total)
    report = {name: {"size": of_dataset[name], "target_share": round(shares[name], 6), "records": counts[name],
                     "realised_share": round(counts[name] / total, 6),
                     "passes": round(counts[name] / of_dataset[name], 3)} for name in sorted(of_dataset)}
    # a dataset given as several entries (e.g. VQAv2's train2014 and val2014 files) splits its count by their sizes
    of_entry = {}
    for name in of_dataset:
        entries = {i: size for i, (entry, (dataset, size)) in enumerate(zip(cfg["datasets"], sizes))
                   if in_mixture(entry, cfg) and size and dataset == name}
        split = plan_counts({i: size / of_dataset[name] for i, size in entries.items()}, counts[name])
        of_entry.update(split)
    return of_entry, report
