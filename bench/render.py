"""Render throughput: records/s/core of `loom render` on single-image instruction records, here and on Ray.

    python bench/render.py [--questions 400000] [--files CORES] [--images 400] [--repeats 3]

A VQAv2-format fixture (the official questions + annotations layout: ten human answers per question)
of N questions over a few hundred shapes-world images, cut into `--files` pairs of files (as VQAv2
ships train2014 and val2014), is rendered three ways, each `--repeats` times after a warm-up: the
template step alone (`render_table`: templates drawn and rendered, Arrow columns built; one core, in
this process), and the whole stage as the `loom render` command (annotation files read through the
adapter, records rendered, parquet written), in its own process (`render.ray: never`, one core) and
joining a Ray already running on this machine (`--ray-address`; a Ray task per file pair, on every
core). Issue 4's target: >= 50,000 records/s/core for single-image tasks.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
BIN = Path(sys.executable).parent


def write_fixture(out: Path, questions: int, images: int, files: int, seed: int = 0) -> list[dict]:
    """`files` pairs of VQAv2 train files holding `questions` questions in all, true of `images`
    shapes-world scenes, reused in turn; a render entry per pair."""
    from pipelines.shapes_world.draw import draw_scene, encode_jpeg
    from pipelines.shapes_world.scenes import make_scene, questions as scene_questions

    folder = out / "train2014"
    folder.mkdir(parents=True, exist_ok=True)
    pools = []
    for image_id in range(1, images + 1):
        rng = random.Random(f"bench-render/{seed}/{image_id}")
        scene = make_scene(rng)
        (folder / f"COCO_train2014_{image_id:012d}.jpg").write_bytes(encode_jpeg(draw_scene(scene)))
        pools.append((image_id, scene_questions(scene, rng) or [{"question": "Is there a shape?", "answer": "no",
                                                                  "answer_type": "yes/no", "question_type": "is there"}]))
    qs, anns = [], []
    for n in range(questions):
        image_id, pool = pools[n % images]
        qa = pool[(n // images) % len(pool)]
        qs.append({"image_id": image_id, "question": qa["question"], "question_id": n})
        anns.append({"question_id": n, "image_id": image_id, "question_type": qa["question_type"],
                     "answer_type": qa["answer_type"], "multiple_choice_answer": qa["answer"],
                     "answers": [{"answer": qa["answer"], "answer_confidence": "yes", "answer_id": k + 1}
                                 for k in range(10)]})
    entries = []
    for k in range(files):
        questions_file, annotations_file = out / f"questions-{k}.json", out / f"annotations-{k}.json"
        questions_file.write_text(json.dumps({"data_subtype": "train2014", "questions": qs[k::files]}))
        annotations_file.write_text(json.dumps({"annotations": anns[k::files]}))
        entries.append({"card": "vqav2", "questions_file": str(questions_file),
                        "annotations_file": str(annotations_file), "image_root": str(folder), "split": "train"})
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=400_000)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--files", type=int, default=os.cpu_count(), help="question/annotation file pairs")
    parser.add_argument("--part-records", type=int, default=100_000)
    parser.add_argument("--out", default="/tmp/loom-bench-render")
    args = parser.parse_args()

    import ray

    from jobs.render import read_records
    from pipelines.render import collector_paused, render_table

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    entries = write_fixture(out / "fixture", args.questions, args.images, args.files)
    cores = os.cpu_count()
    records = [record for entry in entries for record in read_records(entry)]

    times: dict[str, list[float]] = {"template_step_one_core": [], "stage_in_process": [], "stage_on_ray": []}
    phases = {}
    ray.init(num_cpus=cores, include_dashboard=False, logging_level="WARNING")
    address = ray.get_runtime_context().gcs_address
    try:
        for r in range(-1, args.repeats):  # round -1 warms up
            started = time.perf_counter()
            with collector_paused():  # as the stage renders
                render_table(records, 0)
            times["template_step_one_core"].append(time.perf_counter() - started)
            for name, mode in (("stage_in_process", "never"), ("stage_on_ray", "always")):
                # `loom render` as a user runs it, in a process of its own; on Ray it joins the running cluster
                config = out / f"{name}.yaml"
                config.write_text(json.dumps({"render": {"datasets": entries, "ray": mode,
                                                         "part_records": args.part_records}}))
                run = out / f"{name}-{r}"
                command = [str(BIN / "loom"), "render", str(config), "--out", str(run)]
                command += ["--ray-address", address] if mode == "always" else []
                started = time.perf_counter()
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                times[name].append(time.perf_counter() - started)
                if done.returncode:
                    raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
                manifest = json.loads((run / "render" / "manifest.json").read_text())
                phases[name] = manifest["phase_seconds"]
                assert manifest["rows_out"] == args.questions
            print(f"round {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()),
                  file=sys.stderr)
            if r < 0:
                for values in times.values():
                    values.clear()
    finally:
        ray.shutdown()
    median = {name: statistics.median(v) for name, v in times.items()}
    used = {"template_step_one_core": 1, "stage_in_process": 1, "stage_on_ray": cores}
    results = {
        "records": args.questions, "files": args.files, "images": args.images, "cores": cores, "repeats": args.repeats,
        "part_records": args.part_records,
        **{name: {"seconds_median": round(median[name], 2), "seconds": [round(t, 2) for t in times[name]],
                  "records_per_s": round(args.questions / median[name]),
                  "records_per_s_per_core": round(args.questions / median[name] / used[name])} for name in times},
        "phase_seconds_last_round": phases,
    }
    print(json.dumps(results, indent=2))
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
