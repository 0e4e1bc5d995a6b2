"""The training benchmarks run end to end at a CPU size and write their figures (the figures themselves are
measured by running the scripts at full size, not here)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_bench(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", **(env or {})}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True,
                          env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_the_throughput_bench_times_packed_and_padded_steps_of_loom_and_the_reference(tmp_path):
    run_bench("train_throughput.py", "--shape", "tiny", "--steps", "2", "--warmup", "1", "--json", str(tmp_path / "t.json"))
    result = json.loads((tmp_path / "t.json").read_text())
    assert set(result["settings"]) == {"loom packed", "loom padded", "reference packed", "reference padded"}
    for setting in result["settings"].values():
        assert setting["steps"] == 2 and setting["useful_tokens"] > 0 and math.isfinite(setting["loss"])
    packed, padded = result["settings"]["loom packed"], result["settings"]["loom padded"]
    assert packed["useful_tokens"] > padded["useful_tokens"]  # 2 rows of 512 tokens hold more than 4 samples
    assert result["packed_over_padded"] > 0


def test_the_learnability_bench_trains_a_preset_through_its_stages_and_scores_it(tmp_path):
    done = run_bench("learn.py", "--out", str(tmp_path), "--presets", "minigpt4", "--train-scenes", "12",
                     "--val-scenes", "6", "--epochs", "1", "--llm-epochs", "1", "--llm-scenes", "10")
    [row] = json.loads((tmp_path / "table.json").read_text())
    assert row["preset"] == "minigpt4" and [s["name"] for s in row["stages"]] == ["pretrain", "instruct"]
    assert row["llm_pretraining"]["steps"] > 0 and row["questions"] > 0
    assert 0 <= row["accuracy"] <= 1 and 0 < row["majority"] <= 1
    assert "| minigpt4 |" in done.stdout


def test_the_learnability_bench_runs_where_ray_and_polars_are_not_installed(tmp_path):
    """As on the GPU machines bench/gpu.sh runs on: torch and transformers, no Ray, no polars."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text("import sys\nsys.modules.update(ray=None, polars=None)\n")
    run_bench("learn.py", "--out", str(tmp_path / "learn"), "--presets", "blip2-opt", "--train-scenes", "12",
              "--val-scenes", "4", "--epochs", "1", "--llm-epochs", "1", "--llm-scenes", "10", "--eval-limit", "8",
              env={"PYTHONPATH": str(tmp_path / "site")})
    [row] = json.loads((tmp_path / "learn" / "table.json").read_text())
    lm = row["llm_pretraining"]  # loom lm made its LLM, and scored it with and without the scene's description
    assert lm["steps"] > 0 and 0 <= lm["from_description"] <= 1 and 0 <= lm["blind_lm"] <= 1
    assert (tmp_path / "learn" / "blip2-opt" / "lm" / "config.json").exists()
    summary = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_summary.py"), str(tmp_path / "learn" / "table.json"),
                              str(tmp_path / "none.json"), "1", "2"], capture_output=True, text=True)
    assert "| blip2-opt |" in summary.stdout and "no figures: bench/train_throughput.py wrote none" in summary.stdout


def test_the_tower_bench_probes_random_towers_at_the_patch_grids_asked(tmp_path):
    from pipelines.shapes_world.export import write_demo_data

    write_demo_data(tmp_path / "demo", pair_scenes=4, train_scenes=24, val_scenes=8)
    run_bench("tower.py", "--demo", str(tmp_path / "demo"), "--grids", "32/8", "64/8", "--json", str(tmp_path / "t.json"))
    result = json.loads((tmp_path / "t.json").read_text())
    assert [(g["image_size"], g["patch_size"], g["visual_tokens"]) for g in result["random_grids"]] == [(32, 8, 16),
                                                                                                          (64, 8, 64)]
    assert all(0 <= g["kind"] <= 1 and 0 <= g["colour"] <= 1 and g["shapes"] > 0 for g in result["random_grids"])
    assert "object_probe" not in result  # no --tower: only the random towers


def test_the_tower_bench_refuses_a_patch_that_does_not_tile_the_image(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "tower.py"), "--demo", str(tmp_path), "--grids", "64/12"],
                          capture_output=True, text=True, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    assert done.returncode != 0
    assert "--grids '64/12': 12-px patches do not tile a 64-px image" in done.stderr


def test_the_tower_bench_trains_kind_readers_and_splits_a_runs_answers_by_shapes_in_the_scene(tmp_path):
    from jobs.evaluate import write_predictions
    from pipelines.shapes_world.export import write_demo_data

    write_demo_data(tmp_path / "demo", pair_scenes=4, train_scenes=4, val_scenes=6)
    instances = json.loads((tmp_path / "demo" / "coco" / "annotations" / "instances_val2014.json").read_text())
    shapes = {image["file_name"]: 0 for image in instances["images"]}
    files = {image["id"]: image["file_name"] for image in instances["images"]}
    for annotation in instances["annotations"]:
        shapes[files[annotation["image_id"]]] += 1
    # a run's held-out answers as jobs.evaluate writes them (two questions an image, the first right), its last
    # stage named last in the train manifest's stages as loom train writes them
    records = [{"images": [{"path": name, "root": "vqav2.val"}], "answers": ["red"], "question_type": kind,
                "messages": [{"role": "user", "content": "<image>\nWhat color is it?"}]}
               for name in shapes for kind in ("colour", "shape")]
    write_predictions(tmp_path / "run" / "train" / "instruct" / "predictions.parquet", records,
                      ["red"] * len(records), [kind == "colour" for kind in (r["question_type"] for r in records)])
    (tmp_path / "run" / "train" / "manifest.json").write_text(json.dumps({"stages": [{"name": "pretrain"}, {"name": "instruct"}]}))
    run_bench("tower.py", "--demo", str(tmp_path / "demo"), "--run", str(tmp_path / "run"), "--supervised", "2",
              "--patch-probe", "2", "--probe-scenes", "12", "--json", str(tmp_path / "t.json"))
    result = json.loads((tmp_path / "t.json").read_text())
    by_count = result["answers_by_shape_count"]
    assert by_count["stage"] == "instruct"
    expected = {str(n): sum(1 for count in shapes.values() if count == n) for n in set(shapes.values())}
    for kind, right in (("colour", 1.0), ("shape", 0.0)):
        assert {n: cell["questions"] for n, cell in by_count["accuracy"][kind].items()} == expected
        assert all(cell["accuracy"] == right for cell in by_count["accuracy"][kind].values())
    [supervised] = result["supervised_kind"]  # the preset's own grid, no --grids
    assert (supervised["image_size"], supervised["steps"], supervised["train_scenes"]) == (64, 2, 12)
    assert 0 <= supervised["kind"] <= 1
    probe = result["kind_from_patches"]
    assert set(probe) == {"steps", "train_scenes", "held_out_scenes", "random"} and 0 <= probe["random"] <= 1


def test_the_tower_bench_oracle_writes_a_tower_trained_on_each_patchs_look_that_a_run_can_start_from(tmp_path):
    import random

    import torch
    from transformers import CLIPModel

    from pipelines.shapes_world.export import write_demo_data
    from pipelines.shapes_world.scenes import COLOURS, SHAPE_KINDS, make_scene
    from vlm import build_model
    from vlm.checkpoint import init_from_pretrained
    from vlm.contrastive import contrastive_model, save_tower
    from vlm.preset import get_preset

    sys.path.insert(0, str(ROOT / "bench"))
    from tower import oracle_labels

    preset = get_preset("llava-1.5-tiny")
    # each shape's centre patch carries its look; a patch no box holds is background (0)
    scene = make_scene(random.Random(5), width=128, height=64, shape_count=1)
    [shape] = scene.shapes
    labels = oracle_labels(scene, preset).view(8, 8)
    row, col = int((32 + (shape.y0 + shape.y1) / 2) * 0.5 // 8), int((shape.x0 + shape.x1) / 2 * 0.5 // 8)
    assert labels[row, col] == 1 + SHAPE_KINDS.index(shape.kind) * len(COLOURS) + COLOURS.index(shape.colour)
    assert (labels[:2] == 0).all() and (labels[-2:] == 0).all()  # the padding above and below the 128x64 image

    write_demo_data(tmp_path / "demo", pair_scenes=4, train_scenes=4, val_scenes=4)
    save_tower(contrastive_model(preset, 40, 1, 0), preset, tmp_path / "tower")
    run_bench("tower.py", "--demo", str(tmp_path / "demo"), "--tower", str(tmp_path / "tower"), "--oracle", "2",
              "--oracle-out", str(tmp_path / "oracle"), "--probe-scenes", "12", "--json", str(tmp_path / "t.json"))
    oracle = json.loads((tmp_path / "t.json").read_text())["oracle"]
    assert (oracle["steps"], oracle["train_scenes"], oracle["held_out_scenes"]) == (2, 12, 2)
    assert all(0 <= oracle[k] <= 1 for k in ("patches", "shape_patches_kind", "shape_patches_colour"))
    before, after = CLIPModel.from_pretrained(tmp_path / "tower"), CLIPModel.from_pretrained(tmp_path / "oracle")
    changed = [n for n, p in after.state_dict().items() if not torch.equal(p, before.state_dict()[n])]
    assert changed and all(n.startswith("vision_model.") for n in changed)  # the tower trained, the text side kept
    model = build_model(preset, 64, 5, 0, seed=0)
    loaded = init_from_pretrained(model, vision=tmp_path / "oracle", log=lambda *_: None)
    assert loaded == {"vision": str(tmp_path / "oracle")}
    assert torch.equal(model.vision_tower.state_dict()["embeddings.patch_embedding.weight"],
                       after.state_dict()["vision_model.embeddings.patch_embedding.weight"])
