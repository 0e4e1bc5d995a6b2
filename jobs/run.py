"""`loom run`: the stages a config names, in order; each one skips itself when already complete."""
from __future__ import annotations

import json
import time
from pathlib import Path

from jobs.config import section

ORDER = ("demo_data", "ingest", "render", "pack", "train")
DEMO_DEFAULTS = {"seed": 0, "pair_scenes": 600, "train_scenes": 800, "val_scenes": 150, "port": None, "out": None,
                 "messy": False}


def stages_in(config: dict) -> list[str]:
    return [name for name in ORDER if name in config]


def run_demo_data(config: dict, out: str, log=print) -> dict:
    """The shapes world for this run, in `{out}/demo` unless the config says where; reused when present."""
    from pipelines.shapes_world import write_demo_data

    cfg = section(config, "demo_data", DEMO_DEFAULTS)
    target = Path(cfg.pop("out") or Path(out) / "demo")
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


def run_stages(config: dict, out: str, stages: list[str], ray_address: str | None = None, log=print) -> dict:
    """Run the named stages in order, then write the run report; the run folder is this process's meanwhile
    (a second command on it is refused, jobs/out_lock.py)."""
    from jobs.out_lock import out_lock

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
        elif name == "render":
            from jobs.render import run_render

            run_render(config, out, log, ray_address)
        elif name == "pack":
            from jobs.pack import run_pack

            run_pack(config, out, log, ray_address)
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
