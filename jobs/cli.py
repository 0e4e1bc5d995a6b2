"""The `loom` command: one subcommand per stage, plus `run` for a whole config."""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # img2dataset imports albumentations, which phones home

from catalog.cards import TASKS  # noqa: E402 - pyyaml only: `loom --help` stays quick

NOT_BUILT = "is not built yet in this version of Loom"
WORKERS_HELP = "Ray Train workers for the train stage (default: train.workers in the config, else 1)"
RAY_ADDRESS_HELP = ("a running Ray cluster's GCS address, HEAD:6379 (default: $RAY_ADDRESS, which `ray job submit` "
                    "sets for its job; else start a local Ray)")


def _demo_data(args) -> int:
    if args.instructblip:
        from pipelines.shapes_world.formats.instructblip import write_instructblip

        written = write_instructblip(args.out, scenes=args.scenes, seed=args.seed)
        print(f"InstructBLIP's 26 datasets as shapes-world fixtures in their native formats, in {args.out}")
        print(f"  held in, drawn into the training mixture: {', '.join(written['training'])}")
        print(f"  held out, rendered once as evaluation sets: {', '.join(written['evaluation'])}")
        print(f"  render them: loom render {written['config']} --out DIR")
        return 0
    from pipelines.shapes_world import write_demo_data

    summary = write_demo_data(args.out, seed=args.seed, pair_scenes=args.pair_scenes,
                              train_scenes=args.train_scenes, val_scenes=args.val_scenes, port=args.port,
                              messy=args.messy)
    urls = summary["urls"]
    bad = {kind: n for kind, n in urls["row_kinds"].items() if kind != "good"}
    print(f"shapes world (seed {summary['seed']}) written to {args.out}")
    print(f"  urls.parquet: {urls['rows']} rows for {summary['base_url']} "
          f"({urls['row_kinds']['good']} good, captions {urls['good_caption_languages']}; bad on purpose: {bad})")
    for split, counts in summary["coco"].items():
        print(f"  COCO Captions + VQAv2 {split}: {counts}")
    print(f"  details: {args.out}/world.json")
    return 0


def _stage(name):
    def run(args) -> int:
        from jobs.config import load_config
        from jobs import run as runner

        config = _with_workers(load_config(args.config, args.out), args)
        runner.run_stages(config, args.out, [name], ray_address=getattr(args, "ray_address", None))
        return 0
    return run


def _with_workers(config: dict, args) -> dict:
    """--workers N overrides train.workers."""
    if getattr(args, "workers", None):
        config.setdefault("train", {})["workers"] = args.workers
    return config


def _run(args) -> int:
    from jobs.config import load_config
    from jobs import run as runner

    config = _with_workers(load_config(args.config, args.out), args)
    runner.run_stages(config, args.out, runner.stages_in(config), ray_address=args.ray_address)
    return 0


def _config(args) -> int:
    """`loom config schema`: the JSON Schema of a run config; `loom config check CONFIG`: every problem in it."""
    if args.action == "schema":
        import json

        from jobs.schema import json_schema

        text = json.dumps(json_schema(), indent=2) + "\n"
        if not args.out:
            print(text, end="")
            return 0
        from pipelines.manifest import write_atomic

        write_atomic(args.out, text)
        print(f"JSON Schema of a run config written to {args.out}; in a config, point an editor at it with a first "
              f"line `# yaml-language-server: $schema={args.out}`")
        return 0
    if not args.config:
        print("loom config check CONFIG: give the config file to check", file=sys.stderr)
        return 2
    from jobs.config import ConfigError, load_config
    from jobs.run import check_stages, stages_in

    try:
        config = load_config(args.config, args.out or "{out}")
        check_stages(config, args.out or "{out}", stages_in(config))
    except ConfigError as err:
        for problem in err.problems:
            print(f"loom: config error: {problem}", file=sys.stderr)
        return 2
    print(f"ok: {args.config} ({', '.join(stages_in(config)) or 'no stage'})")
    return 0


def _export(args) -> int:
    """`loom export RUN_OR_CHECKPOINT --to hf OUT`: the trained model as a folder transformers loads as it is."""
    from vlm.export import ExportError, export

    try:
        export(args.source, args.out, to=args.to)
    except ExportError as err:
        print(f"loom: export: {err}", file=sys.stderr)
        return 2
    return 0


def _report(args) -> int:
    from jobs.report import write_report

    paths = write_report(args.dir)
    print(f"report: {paths['html']} and {paths['json']}")
    return 0


def _catalog(args) -> int:
    from catalog.cards import card_kind, card_languages, get_card, load_cards, select_cards

    if args.config:  # the config's own card folders (catalog.paths) too
        from jobs.template_tools import use_config_folders

        use_config_folders(args.config)
    if args.action == "list":
        cards = select_cards(load_cards(), kind=args.kind, lang=args.lang, task=args.task, held=args.held)
        if not cards:
            print(f"loom catalog list: no card with kind={args.kind or 'any'}, lang={args.lang or 'any'}, "
                  f"task={args.task or 'any'}, held={args.held or 'any'}", file=sys.stderr)
        width = max([16, *(len(name) for name in cards)])
        for name, card in sorted(cards.items()):
            if card_kind(card) == "pairs":
                what = f"pairs, {'+'.join(card_languages(card))}"
                size = ("~" if card["size"].get("approximate") else "") + _count(card["size"]["pairs"])
                print(f"{name:{width}} {what:24} {size:9} {card['title']}")
            else:
                tasks = ", ".join(card.get("tasks", []))
                pending = "" if card.get("adapter") else "  (adapter not built yet)"
                print(f"{name:{width}} {tasks:24} {card.get('held', ''):9} {card.get('title', '')}{pending}")
    else:
        import yaml

        if not args.name:
            print("loom catalog show NAME: give a card name (see `loom catalog list`)", file=sys.stderr)
            return 2
        print(yaml.safe_dump(get_card(args.name), sort_keys=False, allow_unicode=True))
    return 0


def _count(n: int) -> str:
    """A pair count as people quote it: 3.3M, 747M, 2.3B."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            value = n / scale
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    return str(n)


def _templates(args) -> int:
    if args.action == "preview":
        from jobs.template_tools import print_preview

        if not args.task:
            print("loom templates preview TASK: give a task, e.g. vqa or captioning", file=sys.stderr)
            return 2
        print_preview(args.task, args.lang, args.n, args.seed, args.chat, args.config, args.dataset)
        return 0
    if args.action == "stats":
        from jobs.template_tools import print_stats

        print_stats(args.tokenizer, args.config)
        return 0
    from jobs.template_tools import lint_templates

    problems = lint_templates(config=args.config)
    for problem in problems:
        print(f"  problem: {problem}")
    print(f"{len(problems)} problem(s)" if problems else "ok: every task's templates pass")
    return 1 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loom", description=__doc__.split("\n")[0] + " See DESIGN.md for the flow.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo-data", help="write the synthetic shapes world (images, URL list, COCO/VQAv2 files)")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pair-scenes", type=int, default=600)
    p.add_argument("--train-scenes", type=int, default=800)
    p.add_argument("--val-scenes", type=int, default=150)
    p.add_argument("--port", type=int, default=None, help="port the URL list points at (default: a free one)")
    p.add_argument("--messy", action="store_true",
                   help="also plant what a real crawl meets: malformed and private URLs, junk and mis-sized captions, "
                        "servers that stall, drip, truncate, redirect to private addresses, send bombs or errors")
    p.add_argument("--instructblip", action="store_true",
                   help="instead write InstructBLIP's 26 datasets as native-format fixtures, and OUT/render.yaml "
                        "rendering them (held-in: the training mixture; held-out: evaluation sets)")
    p.add_argument("--scenes", type=int, default=6, help="with --instructblip: scenes per dataset")
    p.set_defaults(func=_demo_data)

    for name, help_text in (("ingest", "URL lists → pairs (img2dataset + filters on Ray)"),
                            ("tower", "pairs → a preset's vision tower pretrained with CLIP's contrastive loss, "
                                      "for train.init.vision"),
                            ("render", "pairs + annotations → instruction records"),
                            ("pack", "instructions → packed token sequences"),
                            ("lm", "render text → the preset's LLM pretrained to answer from a scene described in "
                                   "its prompt, for train.init.llm"),
                            ("train", "packed → checkpoints, stage by stage, then evaluation "
                                      "(one process, or --workers N Ray Train workers)")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("config")
        p.add_argument("--out", required=True, help="run folder; the stage writes OUT/" + name)
        if name in ("ingest", "render", "pack", "train"):
            p.add_argument("--ray-address", default=None, help=RAY_ADDRESS_HELP)
        if name == "train":
            p.add_argument("--workers", type=int, default=None, help=WORKERS_HELP)
        p.set_defaults(func=_stage(name))

    p = sub.add_parser("run", help="every stage the config names, in order; resumable")
    p.add_argument("config")
    p.add_argument("--out", required=True)
    p.add_argument("--ray-address", default=None, help=RAY_ADDRESS_HELP)
    p.add_argument("--workers", type=int, default=None, help=WORKERS_HELP)
    p.set_defaults(func=_run)

    p = sub.add_parser("config", help="schema: the JSON Schema of a run config (for editors); check CONFIG: "
                                      "every problem in a config, or ok")
    p.add_argument("action", choices=["schema", "check"])
    p.add_argument("config", nargs="?", help="check: the config file")
    p.add_argument("--out", default=None, help="schema: write it to this file instead of printing it; check: the run "
                                               "folder `{out}` stands for (default: paths are checked as written)")
    p.set_defaults(func=_config)

    p = sub.add_parser("export", help="a run's trained model (its last stage) or a checkpoint as a folder "
                                      "transformers loads as it is: weights, tokenizer, chat template, processor")
    p.add_argument("source", help="a run folder (--out of loom run / loom train), RUN/train/STAGE, or a checkpoint")
    p.add_argument("out", help="the folder to write (replaced whole)")
    p.add_argument("--to", choices=["hf", "loom"], default="hf",
                   help="hf: transformers' format (Loom's, with the reason, where transformers has no class); "
                        "loom: Loom's format with the tokenizer and chat template beside it")
    p.set_defaults(func=_export)

    p = sub.add_parser("report", help="HTML + JSON report of a run folder")
    p.add_argument("dir")
    p.set_defaults(func=_report)

    p = sub.add_parser("templates", help="lint the templates; preview TASK: rendered examples; stats: counts and lengths")
    p.add_argument("action", choices=["lint", "preview", "stats"])
    p.add_argument("task", nargs="?", help="preview: the task whose templates to show, e.g. vqa")
    p.add_argument("-n", type=int, default=5, help="preview: how many examples (default 5)")
    p.add_argument("--lang", default="en", help="preview: en or zh (default en)")
    p.add_argument("--chat", default="llava_v1", help="preview: the chat format to lay them out in (templates/chat/)")
    p.add_argument("--config", default=None,
                   help="read this run config's templates.paths and catalog.paths alongside Loom's "
                        "templates and cards; preview: draw records from its render.datasets instead of the shapes world")
    p.add_argument("--dataset", default=None, help="preview: with --config, only this card or adapter")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", default=None,
                   help="stats: also count prompt tokens with this tokenizer.json (or a folder holding one)")
    p.set_defaults(func=_templates)

    p = sub.add_parser("catalog", help="list|show the cards: annotated datasets and caption-pair sources")
    p.add_argument("action", choices=["list", "show"])
    p.add_argument("name", nargs="?")
    p.add_argument("--config", default=None, help="also the cards of this run config's catalog.paths")
    p.add_argument("--kind", choices=["pairs", "dataset"], default=None,
                   help="list only caption-pair sources (pairs) or annotated datasets (dataset)")
    p.add_argument("--lang", default=None, help="list only cards in this language, e.g. en or zh")
    p.add_argument("--task", choices=TASKS, default=None,
                   help="list only the datasets of one InstructBLIP task category")
    held = p.add_mutually_exclusive_group()
    held.add_argument("--held-in", dest="held", action="store_const", const="held-in",
                      help="list only datasets InstructBLIP trains on")
    held.add_argument("--held-out", dest="held", action="store_const", const="held-out",
                      help="list only datasets InstructBLIP keeps for zero-shot evaluation")
    p.set_defaults(func=_catalog, held=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from catalog.adapters import AnnotationError
    from catalog.cards import UnknownCardError
    from catalog.records import RecordError
    from jobs.config import ConfigError
    from jobs.out_lock import OutInUse
    from pipelines.shapes_world import PortInUseError
    from templates.library import TemplateError
    from vlm.checkpoint_files import DamagedCheckpoint

    try:
        return args.func(args)
    except ConfigError as err:
        print(f"loom: config error: {err}", file=sys.stderr)
        return 2
    except (UnknownCardError, AnnotationError, RecordError, TemplateError, PortInUseError, OutInUse,
            DamagedCheckpoint) as err:
        print(f"loom: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    except OSError as err:  # a missing file, a full disk, a folder without write permission: say which path
        print(f"loom: {_os_error(getattr(err, 'cause', None) or err, getattr(args, 'out', None))}", file=sys.stderr)
        return 2


def _os_error(err: OSError, out: str | None = None) -> str:
    """An OSError as one line with its path, not its errno alone (str(FileNotFoundError(2)) is '2'); a full
    disk with the bytes free there and the bytes the write needed (a Ray task's error carries its cause)."""
    import errno

    if err.errno == errno.ENOSPC:
        return _disk_full(err.filename or out, getattr(err, "needed", None), getattr(err, "stage_needs", None))
    if err.strerror is None:
        return str(err.args[0] if err.args else err)
    where = f"{err.filename}: " if err.filename else ""
    hint = {errno.EACCES: "; check the folder's permissions",
            errno.EROFS: "; the file system is read-only: point --out elsewhere"}.get(err.errno, "")
    return f"{where}{err.strerror}{hint}"


def _disk_full(path: str | None, needed: int | None, stage_needs: int | None = None) -> str:
    """`<path>: disk full (<free> bytes free on <mount>; this write needs about <N> bytes[, the stage about M]);
    ...`, measured now (the failed write's temporary file already removed)."""
    import shutil

    if path is None:
        return "disk full; free space and re-run: finished parts are kept"
    folder = os.path.abspath(path)
    while not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    mount = folder
    while not os.path.ismount(mount):
        mount = os.path.dirname(mount)
    free = f"{shutil.disk_usage(folder).free:,} bytes free on {mount}"
    need = (f"; this write needs about {needed:,} bytes" if needed else "") + (
        f", the stage about {stage_needs:,} at its peak" if stage_needs else "")
    return (f"{path}: disk full ({free}{need}); free space (or point --out elsewhere) and re-run: finished parts are "
            "kept and it resumes")


if __name__ == "__main__":
    sys.exit(main())
