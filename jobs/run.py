"""`loom run`: the stages a config names, in order; each one skips itself when already complete."""
from __future__ import annotations

import json
import time
from pathlib import Path

from jobs.config import section

ORDER = ("demo_data", "ingest", "tower", "render", "pack", "lm", "train")


def stages_in(config: dict) -> list[str]:
    return [name for name in ORDER if name in config]


def demo_output(demo_data: dict, out: str) -> Path:
    """Where the demo_data stage (its settings, `section(config, "demo_data")`) writes the shapes world:
    demo_data.out, else `{out}/demo`."""
    return Path(demo_data["out"] or Path(out) / "demo")


def run_demo_data(config: dict, out: str, log=print) -> dict:
    """The shapes world for this run, in `{out}/demo` unless the config says where; reused when present."""
    from pipelines.shapes_world import write_demo_data

    cfg = section(config, "demo_data")
    target = demo_output(cfg, out)
    cfg.pop("out")
    world = target / "world.json"
    if world.exists():
        settings = json.loads(world.read_text())
        wanted = {"pairs": cfg["pair_scenes"], "train2014": cfg["train_scenes"], "val2014": cfg["val_scenes"]}
        if (settings.get("seed") == cfg["seed"] and settings.get("scenes") == wanted
                and settings["urls"].get("messy", False) == cfg["messy"]):
            log(f"demo_data: shapes world present in {target}; reused")
            return settings
    log(f"demo_data: writing the shapes world to {target}")
    return write_demo_data(str(target), **cfg)


def check_stages(config: dict, out: str, stages: list[str]) -> None:
    """Every named stage's settings checked before the first one runs: the schema's types and ranges, and
    what needs the catalog, the templates or a preset (cards, template ids, stage names, init folders).
    Train's stage names are checked against pack.preset, or the pack output already there; files an
    earlier stage of this run writes are checked by the stage that reads them."""
    written = []  # folders a stage of this run writes before a later one reads them
    if "demo_data" in stages:
        written.append(demo_output(section(config, "demo_data"), out))
    if "ingest" in stages:
        from jobs.ingest import ingest_settings

        # the demo's files do not exist yet: a card source globbing them is checked when ingest reads it
        ingest_settings(config, written)
    if "tower" in stages:
        from jobs.tower import tower_settings

        tower_settings(config)
    if "render" in stages:
        from jobs.render import render_settings

        render_settings(config)
    if "pack" in stages:
        from jobs.pack import pack_settings

        pack_settings(config)
    if "lm" in stages:
        from jobs.lm import lm_settings

        lm_settings(config)
    if "train" in stages:
        from jobs.lm import lm_output
        from jobs.tower import tower_output
        from jobs.train import train_settings
        from pipelines.manifest import read_manifest
        from vlm.preset import get_preset

        packed = read_manifest(section(config, "train")["input"] or Path(out) / "pack")
        preset = section(config, "pack")["preset"] if "pack" in stages else (packed or {}).get("preset")
        if preset is not None:  # else train refuses to start: no pack output to train on
            written += [tower_output(out)] if "tower" in stages else []  # the tower this run pretrains first
            written += [lm_output(out)] if "lm" in stages else []  # and the LLM
            train_settings(config, get_preset(preset), written)


def run_stages(config: dict, out: str, stages: list[str], ray_address: str | None = None, log=print) -> dict:
    """Check every named stage's settings, run the stages in order, then write the run report; the run folder
    is this process's meanwhile (a second command on it is refused, jobs/out_lock.py)."""
    from jobs.out_lock import out_lock

    check_stages(config, out, stages)
    with out_lock(out, log):
        return _run_stages(config, out, stages, ray_address, log)


def _run_stages(config: dict, out: str, stages: list[str], ray_address: str | None, log) -> dict:
    timings = {}
    for name in stages:
        started = time.time()
        if name == "demo_data":
            run_demo_data(config, out, log)
        elif name == "ingest":
            from jobs.ingest import run_ingest

            run_ingest(config, out, ray_address, log)
        elif name == "tower":
            from jobs.tower import run_tower

            run_tower(config, out, log)
        elif name == "render":
            from jobs.render import run_render

            run_render(config, out, log, ray_address)
        elif name == "pack":
            from jobs.pack import run_pack

            run_pack(config, out, log, ray_address)
        elif name == "lm":
            from jobs.lm import run_lm

            run_lm(config, out, log)
        elif name == "train":
            from jobs.train import run_train

            run_train(config, out, log, ray_address)
        timings[name] = round(time.time() - started, 2)
        log(f"{name}: {timings[name]:.1f}s")
    from jobs.report import STAGES, write_report

    if any(name in STAGES for name in stages):  # demo data alone has nothing to report
        paths = write_report(out, timings)
        log(f"report: {paths['html']}")
    return timings
