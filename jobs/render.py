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
from pipelines.render import collector_paused, part_name, render_part
from pipelines.render_pairs import part_rows, plan_parts, render_pairs_part, shard_rows
from templates.library import TemplateError, template_by_id


DEFAULTS = {"seed": 0, "datasets": [], "mixture": None, "part_records": 100_000, "ray": "auto",
            # default: Loom's own templates; instructblip_paper: InstructBLIP's Table 5 where it covers the task
            "template_set": "default"}
# render.ray: "auto" renders on Ray when a cluster is named or the work is several tasks big enough to
# share out (RAY_AUTO_BYTES), in this process otherwise (a local Ray's start, seconds, would dwarf
# rendering a few thousand records). render.part_records: the records of one output file, and the most
# pairs one task holds
RAY_CHOICES = ("auto", "always", "never")
# auto: Ray for several tasks (a task per dataset, or per part of a pairs entry) whose input files add up
# to more than this
RAY_AUTO_BYTES = 64 * 2**20
# render.mixture: the training entries (split train, not caption pairs) reweighted as InstructBLIP mixes them
MIXTURE_DEFAULTS = {"weighting": "sqrt", "adjustments": None, "total": None}

# adapter name -> (the keys an entry must give, the keys it may give)
ADAPTERS = {
    "pairs": ({"path"}, {"split", "limit", "template"}),
    "coco_captions": ({"annotations", "images"}, {"split", "limit", "template", "lang"}),
    "vqav2": ({"questions", "images"}, {"annotations", "split", "limit", "template", "lang"}),
    # your own table (catalog/adapters/generic.py): jsonl, json, parquet, csv or a datasets folder
    "generic": ({"path", "task"}, {"columns", "name", "image_root", "lang", "format", "split", "limit", "template"}),
}


# keys every entry may give besides its adapter's own
ENTRY_OPTIONS = {"split", "limit", "template", "lang"}  # lang: the language of a file's text (default en)


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

    lang = entry.get("lang", "en")
    for task in set(card["tasks"]) - set(CONVERSATION_TASKS):
        try:
            templates = load_task_templates(task)
        except TemplateError as err:
            raise ConfigError(f"{where}: card {entry['card']} is a {task} dataset: {err}") from err
        languages = sorted({t.lang for t in templates if t.draw})
        require(entry.get("template") or lang in languages,
                f"{where}.lang: {lang!r}; task {task} has templates in {languages} only: render this file in one "
                "of them, or pin a template")


def _check_mixture(cfg: dict) -> None:
    mixture = cfg["mixture"]
    if mixture is None:
        return
    from pipelines.mixture import WEIGHTINGS

    require(isinstance(mixture, dict) and not set(mixture) - set(MIXTURE_DEFAULTS),
            f"render.mixture: {mixture!r}; expected a mapping with some of {sorted(MIXTURE_DEFAULTS)}, "
            "e.g. {weighting: sqrt, adjustments: {okvqa: 2.0, aokvqa: 0.5}, total: 100000}")
    mixture = cfg["mixture"] = {**MIXTURE_DEFAULTS, **mixture}
    require(mixture["weighting"] in WEIGHTINGS,
            f"render.mixture.weighting: {mixture['weighting']!r}; expected one of {', '.join(WEIGHTINGS)}")
    adjustments = mixture["adjustments"]
    require(adjustments is None or (isinstance(adjustments, dict) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in adjustments.values())),
        f"render.mixture.adjustments: {adjustments!r}; expected dataset: factor (a number >= 0)")
    total = mixture["total"]
    require(total is None or (isinstance(total, int) and not isinstance(total, bool) and total > 0),
            f"render.mixture.total: {total!r}; expected a positive number of records (default: the datasets' sizes added up)")
    for i, entry in enumerate(cfg["datasets"]):
        if "card" in entry and entry.get("split", "train") == "train":
            from catalog.cards import get_card

            require(get_card(entry["card"])["held"] != "held-out",
                    f"render.datasets[{i}]: {entry['card']} is held out in InstructBLIP (zero-shot evaluation); "
                    "it cannot enter the training mixture: render it with split val or test, or leave out render.mixture")


def in_mixture(entry: dict, cfg: dict) -> bool:
    """Whether an entry's records are reweighted into the training mixture."""
    return cfg["mixture"] is not None and entry.get("split", "train") == "train" and entry.get("adapter") != "pairs"


def render_settings(config: dict) -> dict:
    cfg = section(config, "render", DEFAULTS)
    require(bool(cfg["datasets"]), "render.datasets: empty; list the datasets to render, e.g. "
            "[{adapter: pairs, path: '{out}/ingest'}] or [{card: vizwiz, annotation_file: ..., image_root: ...}]")
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
    require(cfg["ray"] in RAY_CHOICES, f"render.ray: {cfg['ray']!r}; expected one of {', '.join(RAY_CHOICES)}")
    require(isinstance(cfg["part_records"], int) and cfg["part_records"] > 0,
            f"render.part_records: {cfg['part_records']!r}; expected a positive number of records per output file")
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

        records = read_generic(entry["path"], entry["task"], entry.get("columns"), entry.get("name"),
                               entry.get("image_root"), entry.get("lang"), entry.get("format"), split)
    elif entry["adapter"] == "coco_captions":
        from catalog.adapters.coco_captions import read_coco_captions

        records = read_coco_captions(entry["annotations"], entry["images"], split)
    else:
        from catalog.adapters.vqav2 import read_vqav2

        records = read_vqav2(entry["questions"], entry.get("annotations"), entry["images"], split)
    records = records[: entry["limit"]] if entry.get("limit") else records
    if entry.get("lang"):  # a file in another language than its card's (a Chinese VQAv2-format file)
        for record in records:
            record["lang"] = entry["lang"]
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
        else:
            for key in ("annotations", "questions", "path"):
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


def _stem(i: int, entry: dict) -> str:
    """The name every file of entry `i` starts with: `03-vqav2-val`."""
    return f"{i:02d}-{_source(entry)}-{entry.get('split', 'train')}"


def drawing(entry: dict, cfg: dict) -> dict:
    """The entry as render draws its records: its pinned template, else from render.template_set."""
    from templates.library import DEFAULT_SET, SET_MARK

    if entry.get("template") or cfg["template_set"] == DEFAULT_SET:
        return entry
    return {**entry, "template": SET_MARK + cfg["template_set"]}


def render_entry(i: int, entry: dict, records: list[dict] | None, count: int | None, seed: int,
                 part_records: int, folder: str) -> dict:
    """Ray task (or a plain call): one configured dataset's records (read here when None), drawn to
    `count` for the training mixture, rendered into parts of `part_records`; rows in and every part."""
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
    parts = []
    for n, chunk in enumerate(chunks):
        name = part_name(_stem(i, entry), n, len(chunks))
        parts.append((name, render_part(chunk, seed, entry.get("template"), str(Path(folder) / name))))
    return {"rows_in": len(records), "parts": parts,
            "seconds": {"read": read_seconds, "render_and_write": time.perf_counter() - started - read_seconds}}


def entry_size(entry: dict) -> tuple[str | None, int]:
    """Ray task: the dataset an entry's records belong to, and how many there are (to plan the mixture)."""
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
    if on_ray:
        results, mixture_report = _render_on_ray(cfg, plans, stage_dir, ray_address, log)
    else:
        results, mixture_report = _render_here(cfg, plans, stage_dir, log)
    # seconds by phase, added up over the tasks (on Ray they overlap); "stage" is the wall time
    phases = {phase: round(sum(r["seconds"][phase] for r in results), 2) for phase in ("read", "render_and_write")}
    phases["stage"] = round(time.perf_counter() - started, 2)

    files, per_dataset, templates_used, dropped_examples = [], {}, collections.Counter(), {}
    for i, (entry, result) in enumerate(zip(cfg["datasets"], results)):
        record.rows_in += result["rows_in"]
        rows, dropped = 0, collections.Counter()
        for name, summary in result["parts"]:
            files.append(f"instructions/{name}")
            rows += summary["rows"]
            templates_used.update(summary["templates"])
            dropped.update(summary["dropped"])  # records a template refused: left out, never the stage
            for reason, message in summary["dropped_examples"].items():
                dropped_examples.setdefault(reason, message)
            per_dataset[name] = {"adapter": _source(entry), "split": entry.get("split", "train"),
                                 "records": summary["rows"], "languages": dict(sorted(summary["languages"].items()))}
        record.rows_out += rows
        for reason, count in dropped.items():
            record.drop(reason, count)
        refused = "; dropped " + ", ".join(f"{n} as {reason}" for reason, n in sorted(dropped.items())) if dropped else ""
        log(f"render: {_source(entry)} ({entry.get('split', 'train')}): {rows} instruction records{refused}")
    record.extra.update(files=files, datasets=per_dataset, templates=dict(sorted(templates_used.items())),
                        phase_seconds=phases, on_ray=on_ray)
    if dropped_examples:  # the first refusal of each reason, naming its template and record
        record.extra["dropped_examples"] = dict(sorted(dropped_examples.items()))
    if mixture_report:
        record.extra["mixture"] = mixture_report
        log("render: mixture " + ", ".join(f"{d} {m['realised_share']:.3f} (target {m['target_share']:.3f})"
                                            for d, m in mixture_report.items()))
    return record.finish(stage_dir)


def _pairs_plans(cfg: dict) -> dict[int, list]:
    """The parts of every pairs entry (by its index): slices of its shard indexes, planned from their
    footers alone; `limit` cuts the plan, not a list of records."""
    return {i: plan_parts(shard_rows(entry["path"]), cfg["part_records"], entry.get("limit") or None)
            for i, entry in enumerate(cfg["datasets"]) if entry.get("adapter") == "pairs"}


def _pairs_part_calls(i: int, entry: dict, plan: list, seed: int, folder: str) -> list[tuple[str, tuple]]:
    """(file name, `render_pairs_part`'s arguments) of every part of pairs entry `i`, in shard order."""
    calls = []
    for n, part in enumerate(plan):
        name = part_name(_stem(i, entry), n, len(plan))
        calls.append((name, (part, entry.get("split", "train"), seed, entry.get("template"), str(Path(folder) / name))))
    return calls


def _log_part(log, entry: dict, done: int, summary: dict, parts: int) -> None:
    if parts > 1:
        kept = " (written by an earlier run; kept)" if summary["kept"] else ""
        log(f"render: {_source(entry)} ({entry.get('split', 'train')}): part {done}/{parts}{kept}")


def _pairs_result(plan: list, names: list[str], summaries: list[dict]) -> dict:
    """What `render_entry` returns, for a pairs entry rendered part by part."""
    return {"rows_in": sum(part_rows(part) for part in plan),
            "parts": [(name, {k: summary[k] for k in ("rows", "templates", "languages", "dropped", "dropped_examples")})
                      for name, summary in zip(names, summaries)],
            "seconds": {phase: sum(summary["seconds"][phase] for summary in summaries)
                        for phase in ("read", "render_and_write")}}


def _render_here(cfg: dict, plans: dict[int, list], stage_dir: Path, log) -> tuple[list[dict], dict]:
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
            calls = _pairs_part_calls(i, drawing(entry, cfg), plans[i], cfg["seed"], folder)
            summaries = []
            for _, arguments in calls:
                summaries.append(render_pairs_part(*arguments))
                _log_part(log, entry, len(summaries), summaries[-1], len(calls))
            results.append(_pairs_result(plans[i], [name for name, _ in calls], summaries))
        else:
            result = render_entry(i, drawing(entry, cfg), read.pop(i), counts.get(i), cfg["seed"], cfg["part_records"],
                                  folder)
            result["seconds"]["read"] = seconds[i]
            results.append(result)
    return results, report


def _render_on_ray(cfg: dict, plans: dict[int, list], stage_dir: Path, ray_address: str | None,
                   log) -> tuple[list[dict], dict]:
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
            sized = ray.get([size_task.remote(cfg["datasets"][i]) for i in mixed])
            sizes = [(None, 0)] * len(cfg["datasets"])
            for i, size in zip(mixed, sized):
                sizes[i] = size
            counts, report = _plan_mixture(cfg, sizes)
        entry_task, part_task = ray.remote(render_entry), ray.remote(render_pairs_part)
        entry_refs, part_of, calls = {}, {}, {}
        for i, entry in enumerate(cfg["datasets"]):
            if i in plans:
                calls[i] = _pairs_part_calls(i, drawing(entry, cfg), plans[i], cfg["seed"], folder)
                part_of.update({part_task.remote(*arguments): (i, n) for n, (_, arguments) in enumerate(calls[i])})
            else:
                entry_refs[i] = entry_task.remote(i, drawing(entry, cfg), None, counts.get(i), cfg["seed"],
                                                  cfg["part_records"], folder)
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
