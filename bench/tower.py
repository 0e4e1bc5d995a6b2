"""Does a vision tower see the shapes world? Linear probes of its features, and zero-shot captions.

    python bench/tower.py --demo runs/quickstart/demo --tower runs/quickstart/tower [--preset llava-1.5-tiny]
                          [--json runs/quickstart/tower_probe.json]

Two tests on the shapes world's COCO-format splits (train2014 to fit, the held-out val2014 to score), each
for the pretrained tower and for the random tower the preset starts from without one (same seed as a run):

- object probe: every shape's feature is the mean of the tower's patch features under its box, read from
  the hidden state the preset's connector reads (LLaVA's penultimate layer); a logistic regression on the
  train scenes' shapes predicts each held-out shape's kind (5) and colour (6) from it. It asks what the
  connector can find at a shape's place in the image.
- zero-shot (a CLIP tower with its text side): each held-out scene of one shape is matched to the nearest
  of the 30 captions "A {colour} {kind}.", its kind and colour scored apart. Scenes of several shapes are
  left out: a CLIP-style embedding knows which colours and kinds are present more surely than which colour
  goes with which kind, and that binding is what the object probe above measures.

`--grids 128/8 128/16` also probes random towers of the preset's shape at those image and patch sizes (no
`--tower` needed): how much of a shape's kind the patch grid alone leaves in the features, the bound a
pretrained tower of that grid starts from.

`--supervised STEPS` trains the preset's tower (and one per `--grids` grid), from random, on the kind of
the one shape in freshly drawn shapes-world scenes (the demo's size range; `--probe-scenes` to train,
default 3000, and a sixth as many held out; batches of 64, AdamW, warmup and cosine decay), its pooled
output through a linear head: what the architecture at that grid learns of a shape's kind in STEPS steps
when told it directly, the ceiling a contrastive objective, which only sees captions, works under.

`--patch-probe STEPS` keeps each tower frozen (the random one a run would start from, and `--tower`'s) and
trains a small reader on them (two transformer layers of width 128 over the patch features the connector
reads, mean-pooled, a linear head; the quickstart's LLM has four such layers) on the same one-shape
scenes' kinds: how much of a shape's kind a frozen tower leaves for the LLM to find, where the linear
object probe above asks it of one averaged feature.

`--oracle STEPS --oracle-out FOLDER` (a diagnostic, not a recipe) trains a copy of `--tower`'s tower on the
answers: each patch's kind and colour (the shape whose box holds its centre, or none), read through a
linear head from the features the connector reads, on freshly drawn scenes of 1-4 shapes
(`--probe-scenes`), and writes it as a tower folder. `train.init.vision: FOLDER` then shows what a run's
LLM stages make of a tower that sees every shape: the ceiling of any tower recipe under that run's stages.

`--run RUN` reads a run's held-out answers (its last stage's predictions.parquet) and splits each question
type's accuracy by the number of shapes in the scene: a colour question about "the triangle" answered on
one-shape scenes and failed on four-shape ones is a model that sees colour and not kind.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pipelines.shapes_world.scenes import COLOURS, SHAPE_KINDS  # noqa: E402
from vlm.images import ImageProcessor  # noqa: E402
from vlm.preset import get_preset  # noqa: E402
from vlm.vision import build_vision_tower  # noqa: E402


def scenes(demo: Path, split: str) -> list[dict]:
    """The split's images with their shapes: file, width, height and (kind, colour, box) per shape."""
    instances = json.loads((demo / "coco" / "annotations" / f"instances_{split}.json").read_text())
    names = {c["id"]: c["name"].split(" ", 1) for c in instances["categories"]}  # "red circle" → (red, circle)
    images = {i["id"]: {"file": str(demo / "coco" / split / i["file_name"]), "width": i["width"],
                        "height": i["height"], "shapes": []} for i in instances["images"]}
    for a in instances["annotations"]:
        colour, kind = names[a["category_id"]]
        images[a["image_id"]]["shapes"].append({"kind": kind, "colour": colour, "box": a["bbox"]})
    return list(images.values())


def prepared_box(width: int, height: int, box: tuple, image_size: int) -> tuple[float, float, float, float]:
    """A box (x0, y0, x1, y1) of a width x height image in pixels of the image vlm.images.ImageProcessor
    prepares from it: padded to a square (centred), resized to image_size."""
    side = max(width, height)
    scale = image_size / side
    left, top = (side - width) // 2, (side - height) // 2
    x0, y0, x1, y1 = box
    return (left + x0) * scale, (top + y0) * scale, (left + x1) * scale, (top + y1) * scale


def patches_under(scene: dict, box: list[float], image_size: int, patch_size: int) -> list[int]:
    """Indices (CLS is 0) of the patches a box overlaps once the image is padded to a square and resized, as
    vlm.images.ImageProcessor prepares it."""
    x, y, w, h = box
    x0, y0, x1, y1 = prepared_box(scene["width"], scene["height"], (x, y, x + w, y + h), image_size)
    grid = image_size // patch_size
    cols = range(int(x0 // patch_size), min(grid, int(-(-x1 // patch_size))))
    rows = range(int(y0 // patch_size), min(grid, int(-(-y1 // patch_size))))
    return [1 + r * grid + c for r in rows for c in cols]


@torch.no_grad()
def object_features(tower, preset, split: list[dict]) -> tuple[torch.Tensor, list[str], list[str]]:
    """(features (S, D), kinds, colours) of every shape of the split's scenes."""
    processor = ImageProcessor(preset)
    features, kinds, colours = [], [], []
    for start in range(0, len(split), 64):
        batch = split[start:start + 64]
        pixels = torch.stack([processor(scene["file"]) for scene in batch])
        hidden = tower(pixels, output_hidden_states=True).hidden_states[preset.vision_feature_layer]  # (N, 1+P, D)
        for scene, states in zip(batch, hidden):
            for shape in scene["shapes"]:
                features.append(states[patches_under(scene, shape["box"], preset.image_size, preset.patch_size)].mean(0))
                kinds.append(shape["kind"])
                colours.append(shape["colour"])
    return torch.stack(features), kinds, colours


def linear_probe(train_x: torch.Tensor, train_y: list[str], test_x: torch.Tensor, test_y: list[str],
                 labels: tuple[str, ...], steps: int = 500) -> float:
    """Held-out accuracy of a logistic regression (standardised features, L2, full-batch Adam)."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    target = torch.tensor([labels.index(y) for y in train_y])
    torch.manual_seed(0)
    probe = torch.nn.Linear(train_x.shape[1], len(labels))
    optimizer = torch.optim.Adam(probe.parameters(), lr=0.05, weight_decay=1e-3)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(probe(train_x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    predicted = probe(test_x).argmax(1).tolist()
    return round(sum(labels[p] == y for p, y in zip(predicted, test_y)) / len(test_y), 4)


def probe_tower(tower, preset, train: list[dict], held_out: list[dict]) -> dict:
    train_x, train_kinds, train_colours = object_features(tower, preset, train)
    test_x, test_kinds, test_colours = object_features(tower, preset, held_out)
    return {"shapes": len(test_kinds),
            "kind": linear_probe(train_x, train_kinds, test_x, test_kinds, SHAPE_KINDS),
            "colour": linear_probe(train_x, train_colours, test_x, test_colours, COLOURS)}


def zero_shot(tower_dir: Path, preset, held_out: list[dict]) -> dict | None:
    """Nearest of the 30 one-shape captions for each held-out scene of one shape, kind and colour scored apart."""
    from transformers import CLIPModel, PreTrainedTokenizerFast

    from vlm.contrastive import embed

    config = json.loads((tower_dir / "config.json").read_text())
    if config.get("model_type") != "clip" or not (tower_dir / "tokenizer.json").is_file():
        return None
    model = CLIPModel.from_pretrained(tower_dir)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tower_dir)
    looks = [(colour, kind) for colour in COLOURS for kind in SHAPE_KINDS]
    captions = [tokenizer(f"A {colour} {kind}.")["input_ids"] + [tokenizer.eos_token_id] for colour, kind in looks]
    single = [scene for scene in held_out if len(scene["shapes"]) == 1]
    images, texts = embed(model, preset, [scene["file"] for scene in single], captions)
    nearest = [looks[i] for i in (images @ texts.T).argmax(1).tolist()]
    truth = [(s["shapes"][0]["colour"], s["shapes"][0]["kind"]) for s in single]
    return {"scenes": len(single),
            "kind": round(sum(p[1] == t[1] for p, t in zip(nearest, truth)) / len(single), 4),
            "colour": round(sum(p[0] == t[0] for p, t in zip(nearest, truth)) / len(single), 4)}


def at_grid(preset, grid: str):
    """`preset` with its images at another size and patch ("IMAGE/PATCH", e.g. "128/16"), the tower otherwise the
    same shape."""
    try:
        image_size, patch_size = (int(n) for n in grid.split("/"))
    except ValueError:
        raise SystemExit(f"--grids {grid!r}: expected IMAGE/PATCH in pixels, e.g. 128/16") from None
    if image_size % patch_size:
        raise SystemExit(f"--grids {grid!r}: {patch_size}-px patches do not tile a {image_size}-px image; "
                         "pick a divisor")
    vision = dict(preset.vision, image_size=image_size, patch_size=patch_size)
    return dataclasses.replace(preset, image_size=image_size, patch_size=patch_size, vision=vision,
                               visual_tokens=(image_size // patch_size) ** 2)


def random_tower(preset, seed: int):
    """The tower a run starts from without a pretrained one (same seed as train.seed)."""
    torch.manual_seed(seed)
    return build_vision_tower(preset.vision_kind, preset.vision).eval()


def pretrained_tower(folder: Path, preset):
    """The tower in a `loom tower` folder, read by its own transformers class as any checkpoint of it is."""
    from transformers import Blip2VisionModel, CLIPVisionModel

    return (CLIPVisionModel if preset.vision_kind == "clip" else Blip2VisionModel).from_pretrained(folder)


def drawn_scenes(preset, seeds: tuple[int, int], train_scenes: int, label, shape_count: int | None = None) -> tuple:
    """(train pixels, train labels, held-out pixels, held-out labels): `train_scenes` freshly drawn scenes and
    a sixth as many held out (from random.Random of each of `seeds`), in the demo's size range, of
    `shape_count` shapes (default 1-4), prepared as a run prepares its images; `label(scene)` is a tensor."""
    import random

    from pipelines.shapes_world.draw import draw_scene
    from pipelines.shapes_world.scenes import make_scene

    processor = ImageProcessor(preset)

    def drawn(count: int, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
        scenes_ = [make_scene(rng, shape_count=shape_count) for _ in range(count)]
        return (torch.stack([processor(draw_scene(scene)) for scene in scenes_]),
                torch.stack([label(scene) for scene in scenes_]))

    held_out_scenes = max(1, train_scenes // 6)
    return (*drawn(train_scenes, random.Random(seeds[0])), *drawn(held_out_scenes, random.Random(seeds[1])))


def one_shape_scenes(preset, seed: int, train_scenes: int = 3000) -> tuple:
    """(train pixels, train kinds, held-out pixels, held-out kinds): freshly drawn scenes of one shape each."""
    return drawn_scenes(preset, (seed + 1, seed + 2), train_scenes,
                        lambda scene: torch.tensor(SHAPE_KINDS.index(scene.shapes[0].kind)), shape_count=1)


class PatchProbe(torch.nn.Module):
    """Two transformer layers (width 128) over a tower's patch features, mean-pooled, then a linear head: a
    reader smaller than the quickstart's LLM (four such layers) that reads them in a run."""

    def __init__(self, width: int, patches: int, labels: int):
        super().__init__()
        self.inp = torch.nn.Linear(width, 128)
        self.position = torch.nn.Parameter(torch.zeros(1, patches, 128))
        layer = torch.nn.TransformerEncoderLayer(128, 4, 256, dropout=0.0, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, 2)
        self.out = torch.nn.Linear(128, labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.encoder(self.inp(features) + self.position).mean(1))


def _fit(model: torch.nn.Module, forward, train_x, train_y, test_x, steps: int, seed: int,
         lr: float) -> torch.Tensor:
    """The labels `forward(model, x)` predicts for `test_x` after `steps` AdamW steps of 64 on `train_x`
    (warmup, cosine decay)."""
    from vlm.train import warmup_cosine

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps, math.ceil(steps * 0.05)))
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        rows = torch.randint(0, len(train_x), (64,), generator=generator)
        loss = torch.nn.functional.cross_entropy(forward(model, train_x[rows]), train_y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        return torch.cat([forward(model, test_x[i:i + 128]).argmax(1) for i in range(0, len(test_x), 128)])


def _accuracy(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    return round((predicted == truth).float().mean().item(), 4)


def supervised_kind(preset, drawn: tuple, steps: int, seed: int) -> dict:
    """Held-out kind accuracy of `preset`'s tower trained from random on one-shape scenes' kinds (`drawn`, from
    one_shape_scenes at its grid) for `steps`, its pooled output through a linear head."""
    train_x, train_y, test_x, test_y = drawn
    torch.manual_seed(seed)
    model = torch.nn.ModuleDict({"tower": random_tower(preset, seed),
                                 "head": torch.nn.Linear(preset.vision["hidden_size"], len(SHAPE_KINDS))})
    started = time.time()
    kind = _accuracy(_fit(model, lambda m, x: m["head"](m["tower"](x).pooler_output), train_x, train_y, test_x,
                          steps, seed, lr=2e-3), test_y)
    return {"image_size": preset.image_size, "patch_size": preset.patch_size, "steps": steps,
            "train_scenes": len(train_x), "held_out_scenes": len(test_x), "kind": kind,
            "seconds": round(time.time() - started, 1)}


@torch.no_grad()
def patch_features(tower, preset, pixels: torch.Tensor) -> torch.Tensor:
    """(N, P, D): the patch features the connector reads (the preset's feature layer, CLS dropped)."""
    return torch.cat([tower(pixels[i:i + 256], output_hidden_states=True).hidden_states[preset.vision_feature_layer]
                      [:, 1:] for i in range(0, len(pixels), 256)])


def kind_from_patches(towers: dict, preset, drawn: tuple, steps: int, seed: int) -> dict:
    """For each tower (frozen), the held-out kind accuracy of a PatchProbe trained on its patch features of
    one-shape scenes (`drawn`, from one_shape_scenes) for `steps`: what a reader smaller than the run's LLM can
    find of a shape's kind there."""
    train_x, train_y, test_x, test_y = drawn
    result = {"steps": steps, "train_scenes": len(train_x), "held_out_scenes": len(test_x)}
    for name, tower in towers.items():
        train_f, test_f = patch_features(tower.eval(), preset, train_x), patch_features(tower, preset, test_x)
        torch.manual_seed(seed)
        probe = PatchProbe(train_f.shape[-1], train_f.shape[1], len(SHAPE_KINDS))
        result[name] = _accuracy(_fit(probe, lambda m, f: m(f), train_f, train_y, test_f, steps, seed, lr=1e-3),
                                 test_y)
    return result


def oracle_labels(scene, preset) -> torch.Tensor:
    """(P,): each patch's look, 1 + kind * 6 + colour of the shape whose box holds the patch's centre or whose
    centre the patch holds (once the image is padded to a square and resized, as vlm.images prepares it), 0
    where there is none: a shape's edge patches, mostly background, are left as background."""
    grid, patch = preset.image_size // preset.patch_size, preset.patch_size
    labels = torch.zeros(grid, grid, dtype=torch.long)
    centres = (torch.arange(grid) + 0.5) * patch
    for shape in scene.shapes:
        look = 1 + SHAPE_KINDS.index(shape.kind) * len(COLOURS) + COLOURS.index(shape.colour)
        x0, y0, x1, y1 = prepared_box(scene.width, scene.height, (shape.x0, shape.y0, shape.x1, shape.y1),
                                      preset.image_size)
        inside = ((centres >= y0) & (centres < y1))[:, None] & ((centres >= x0) & (centres < x1))[None, :]
        labels[inside] = look
        labels[min(grid - 1, int((y0 + y1) / 2 // patch)), min(grid - 1, int((x0 + x1) / 2 // patch))] = look
    return labels.flatten()


def oracle_tower(preset, tower_dir: Path, out: Path, steps: int, seed: int, train_scenes: int) -> dict:
    """A diagnostic, not a recipe: `tower_dir`'s tower trained on the answers, each patch's kind and colour
    (oracle_labels) read from the features the connector reads through a linear head, on freshly drawn scenes
    of the demo's kind (1-4 shapes); written to `out` as a copy of `tower_dir` that train.init.vision reads. A
    run trained on it shows what its LLM stages make of a tower that sees every shape's kind and colour."""
    import shutil

    from transformers import CLIPModel

    from vlm.saving import save_beside

    if preset.vision_kind != "clip":
        raise SystemExit(f"--oracle: {preset.name}'s {preset.vision_kind} tower; the oracle writes a CLIP tower folder")
    train_x, train_y, test_x, test_y = drawn_scenes(preset, (seed + 3, seed + 4), train_scenes,
                                                    lambda scene: oracle_labels(scene, preset))
    clip = CLIPModel.from_pretrained(tower_dir)
    torch.manual_seed(seed)
    model = torch.nn.ModuleDict({"tower": clip.vision_model, "head": torch.nn.Linear(
        preset.vision["hidden_size"], 1 + len(SHAPE_KINDS) * len(COLOURS))})

    def forward(m, pixels: torch.Tensor) -> torch.Tensor:  # (N, looks, P), as cross_entropy takes a grid
        hidden = m["tower"](pixels, output_hidden_states=True).hidden_states[preset.vision_feature_layer][:, 1:]
        return m["head"](hidden).transpose(1, 2)

    started = time.time()
    predicted = _fit(model, forward, train_x, train_y, test_x, steps, seed, lr=2e-3)
    shape = test_y > 0
    kind_right = (predicted > 0) & ((predicted - 1) // len(COLOURS) == (test_y - 1) // len(COLOURS))
    colour_right = (predicted > 0) & ((predicted - 1) % len(COLOURS) == (test_y - 1) % len(COLOURS))
    shutil.copytree(tower_dir, out, dirs_exist_ok=True)
    save_beside(clip, out)
    return {"out": str(out), "steps": steps, "train_scenes": len(train_x), "held_out_scenes": len(test_x),
            "patches": _accuracy(predicted, test_y),
            "shape_patches_kind": round(kind_right[shape].float().mean().item(), 4),
            "shape_patches_colour": round(colour_right[shape].float().mean().item(), 4),
            "seconds": round(time.time() - started, 1)}


def answers_by_shape_count(run: Path, held_out: list[dict], demo: Path) -> dict:
    """Each question type's held-out accuracy per number of shapes in the scene (`held_out`: the demo's val2014
    scenes), from the run's last stage."""
    import pyarrow.parquet as pq

    from jobs.evaluate import image_reference

    manifest = run / "train" / "manifest.json"
    stages = json.loads(manifest.read_text())["stages"] if manifest.is_file() else []
    answers = run / "train" / stages[-1]["name"] / "predictions.parquet" if stages else None
    if answers is None or not answers.is_file():
        raise SystemExit(f"--run {run}: no held-out answers of a finished training (train/manifest.json's last "
                         "stage, its predictions.parquet); give a run folder `loom train` finished")
    shapes = {Path(scene["file"]).name: len(scene["shapes"]) for scene in held_out}
    table: dict[str, dict[int, list[int]]] = {}
    for row in pq.read_table(answers).to_pylist():
        name = Path(image_reference(row["image"]).get("path") or "").name
        if name not in shapes:
            raise SystemExit(f"--run {run}: held-out image {name} is not in {demo}'s val2014; give the run's own demo")
        table.setdefault(row["question_type"], {}).setdefault(shapes[name], []).append(int(row["correct"]))
    return {"stage": answers.parent.name,
            "accuracy": {kind: {str(count): {"questions": len(marks), "accuracy": round(sum(marks) / len(marks), 3)}
                                for count, marks in sorted(by_count.items())}
                         for kind, by_count in sorted(table.items())}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo", required=True, help="a shapes world folder (loom demo-data, or a run's demo/)")
    parser.add_argument("--tower", default=None, help="a pretrained tower folder (`loom tower`'s output)")
    parser.add_argument("--preset", default="llava-1.5-tiny")
    parser.add_argument("--seed", type=int, default=0, help="the random tower's seed (a run's train.seed)")
    parser.add_argument("--grids", nargs="*", default=[], metavar="IMAGE/PATCH",
                        help="also probe random towers at these image/patch sizes, e.g. 128/8 128/16")
    parser.add_argument("--supervised", type=int, default=None, metavar="STEPS",
                        help="also train the preset's tower (and each --grids one) on one-shape scenes' kinds")
    parser.add_argument("--patch-probe", type=int, default=None, metavar="STEPS",
                        help="also train a two-layer reader on each tower's frozen patch features for one-shape "
                             "scenes' kinds (the random tower, and --tower's)")
    parser.add_argument("--probe-scenes", type=int, default=3000,
                        help="scenes drawn to train --supervised and --patch-probe (one shape each) and --oracle "
                             "(1-4 shapes), a sixth as many held out")
    parser.add_argument("--oracle", type=int, default=None, metavar="STEPS",
                        help="diagnostic: train --tower on each patch's kind and colour (told, not learnt from "
                             "captions) and write it to --oracle-out for train.init.vision")
    parser.add_argument("--oracle-out", default=None, help="where --oracle writes its tower folder")
    parser.add_argument("--run", default=None, help="a run folder: its held-out answers by shapes in the scene")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    for option, steps in (("--supervised", args.supervised), ("--patch-probe", args.patch_probe),
                          ("--probe-scenes", args.probe_scenes), ("--oracle", args.oracle)):
        if steps is not None and steps < 1:
            parser.error(f"{option} {steps}: give 1 or more")
    if args.tower is None and not args.grids and args.supervised is None and args.run is None \
            and args.patch_probe is None:
        parser.error("give --tower (a pretrained tower to probe), --grids (random towers at other grids), "
                     "--supervised STEPS (the towers trained on kinds), --patch-probe STEPS (a reader of frozen "
                     "patch features) and/or --run (a run's answers)")
    if args.oracle is not None and (args.tower is None or args.oracle_out is None):
        parser.error("--oracle trains a copy of --tower's tower and writes it to --oracle-out; give both")
    preset = get_preset(args.preset)
    grids = [at_grid(preset, grid) for grid in args.grids]
    demo = Path(args.demo)
    train, held_out = scenes(demo, "train2014"), scenes(demo, "val2014")
    started = time.time()
    result = {"preset": preset.name, "tower": args.tower,
              "chance": {"kind": round(1 / len(SHAPE_KINDS), 4), "colour": round(1 / len(COLOURS), 4)}}
    # the random tower a run starts from, and --tower's, each built once for every test that reads it
    towers = {"random": random_tower(preset, args.seed)}
    if args.tower:
        towers["pretrained"] = pretrained_tower(Path(args.tower), preset).eval()
        result["object_probe"] = {name: probe_tower(tower, preset, train, held_out) for name, tower in towers.items()}
        result["zero_shot"] = zero_shot(Path(args.tower), preset, held_out)
    if args.run:
        result["answers_by_shape_count"] = answers_by_shape_count(Path(args.run), held_out, demo)
    if args.patch_probe is not None or args.supervised is not None:
        drawn = one_shape_scenes(preset, args.seed, args.probe_scenes)  # at the preset's grid, for both tests
    if args.patch_probe is not None:
        result["kind_from_patches"] = kind_from_patches(towers, preset, drawn, args.patch_probe, args.seed)
    if args.supervised is not None:
        result["supervised_kind"] = [
            supervised_kind(p, drawn if p is preset else one_shape_scenes(p, args.seed, args.probe_scenes),
                            args.supervised, args.seed) for p in [preset, *grids]]
    if args.oracle is not None:
        result["oracle"] = oracle_tower(preset, Path(args.tower), Path(args.oracle_out), args.oracle, args.seed,
                                        args.probe_scenes)
    if grids:
        result["random_grids"] = [{"image_size": g.image_size, "patch_size": g.patch_size,
                                   "visual_tokens": g.visual_tokens,
                                   **probe_tower(random_tower(g, args.seed), g, train, held_out)} for g in grids]
    result["seconds"] = round(time.time() - started, 1)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
