"""Write the shapes world to disk: a URL list to download over loopback, and COCO Captions / VQAv2 files.

Layout under `out_dir`:

    world.json                      what was written: seed, port, row counts, bad rows
    urls.parquet                    url, caption (the ingest input; captions ~65% en / 35% zh)
    web/images/*.jpg                what the loopback server serves (see server.py)
    coco/train2014/COCO_train2014_{id:012d}.jpg
    coco/val2014/COCO_val2014_{id:012d}.jpg
    coco/annotations/captions_{train,val}2014.json
    coco/annotations/instances_{train,val}2014.json
    vqav2/v2_OpenEnded_mscoco_{train,val}2014_questions.json
    vqav2/v2_mscoco_{train,val}2014_annotations.json

Every scene has its own random stream, named by seed, section and index, so
the same seed gives the same bytes, and growing one section leaves the
others untouched.
"""

from __future__ import annotations

import json
import os
import random
import socket
from pathlib import Path

import pyarrow as pa
from PIL import Image

from pipelines.manifest import atomic_path, write_parquet_atomic

from .draw import draw_scene, encode_jpeg
from .faults import corrupt_jpeg
from .scenes import COLOURS, SHAPE_KINDS, Scene, area, captions, make_scene, outline, questions

DEFAULT_PAIR_SCENES = 600
DEFAULT_TRAIN_SCENES = 800
DEFAULT_VAL_SCENES = 150

# Chinese share of the good URL rows: above the 22.7% of a 77.3/22.7 target
# mix, so that mixing has to downsample Chinese rather than find it short.
ZH_SHARE = 0.35
BAD_ROWS_PER_KIND = 3
BAD_ROW_KINDS = (
    "dead_url",
    "not_image",
    "tiny_image",
    "empty_caption",
    "null_caption",
    "foreign_caption",
    "duplicate_image",
    "near_duplicate_image",
    "extreme_aspect",
)
# What a real crawl adds on top (`messy=True`): rows that break the URL, the caption or the
# server's side of the download. Served by faults.py where the server has to misbehave.
MESSY_ROW_KINDS = (
    "malformed_url",
    "private_address",
    "unreachable_host",
    "redirect_to_private",
    "server_error",
    "slow_server",
    "stalled_server",
    "truncated_body",
    "oversized_body",
    "decompression_bomb",
    "corrupt_image",
    "junk_caption",
    "caption_length",
)
# A near duplicate is a good row's scene as another site would serve it: scaled to 90% and
# saved at a lower JPEG quality, so neither its bytes nor its size match the original.
NEAR_DUPLICATE_SCALE = 0.9
NEAR_DUPLICATE_QUALITY = 75
# Elongated but not small: the short side clears any sensible min-side filter, so these rows
# exercise the aspect-ratio filter rather than the size one.
EXTREME_SIZES = ((480, 40), (40, 480), (600, 48))

TRAIN_FIRST_IMAGE_ID = 1
# Val ids start far above train ids so that image ids, and VQAv2's
# question_id = image_id * 1000 + k, never collide across splits.
VAL_FIRST_IMAGE_ID = 500_001
CAPTIONS_PER_IMAGE = 5
ANSWERS_PER_QUESTION = 10

_NOT_AN_IMAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Image moved</title></head>\n"
    b"<body><h1>This image has moved</h1><p>The page you requested is no longer "
    b"available at this address.</p></body></html>\n"
)
_GERMAN_COUNTS = {2: "zwei", 3: "drei", 4: "vier"}
_FRENCH_COUNTS = {2: "deux", 3: "trois", 4: "quatre"}

_IMAGE_LICENSE = {
    "url": "https://creativecommons.org/publicdomain/zero/1.0/",
    "id": 1,
    "name": "CC0 1.0 (synthetic image)",
}
_VQA_LICENSE = {
    "url": "http://creativecommons.org/licenses/by/4.0/",
    "name": "Creative Commons Attribution 4.0 International License",
}


# ---------------------------------------------------------------- files


def _write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary name and rename, so a reader never sees half a file."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _write_json(path: Path, obj: object, indent: int | None = None) -> None:
    separators = (",", ":") if indent is None else (",", ": ")
    _write_bytes(path, json.dumps(obj, ensure_ascii=False, indent=indent, separators=separators).encode("utf-8"))


def _write_parquet(path: Path, table: pa.Table) -> None:
    write_parquet_atomic(table, path)


def pick_free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _scene_rng(seed: int, section: str, index: int) -> random.Random:
    # A string seed is hashed with SHA-512 by `random`, independent of
    # PYTHONHASHSEED, so streams are stable across processes.
    return random.Random(f"shapes-world/{seed}/{section}/{index}")


# ---------------------------------------------------------------- URL list


def _foreign_caption(scene: Scene, index: int) -> str:
    total = len(scene.shapes)
    # Every background of the world is light, so "hell"/"clair" is true.
    if index % 2 == 0:
        if total == 1:
            return "Auf diesem Bild ist eine geometrische Form auf einem hellen Hintergrund zu sehen."
        return f"Auf diesem Bild sind {_GERMAN_COUNTS[total]} geometrische Formen auf einem hellen Hintergrund zu sehen."
    if total == 1:
        return "Sur cette image, on voit une forme géométrique sur un fond clair."
    return f"Sur cette image, on voit {_FRENCH_COUNTS[total]} formes géométriques sur un fond clair."


def _write_url_list(out: Path, seed: int, pair_scenes: int, port: int, messy: bool = False) -> dict:
    images = out / "web" / "images"
    base = f"http://127.0.0.1:{port}/images"
    rows: list[tuple[str, str | None]] = []
    kinds = BAD_ROW_KINDS + (MESSY_ROW_KINDS if messy else ())
    bad_rows: dict[str, list[str]] = {kind: [] for kind in kinds}

    zh_rows = round(ZH_SHARE * pair_scenes)
    languages = ["zh"] * zh_rows + ["en"] * (pair_scenes - zh_rows)
    random.Random(f"shapes-world/{seed}/caption-languages").shuffle(languages)
    good: list[tuple[Scene, bytes, str]] = []
    for i in range(pair_scenes):
        rng = _scene_rng(seed, "pairs", i)
        scene = make_scene(rng)
        data = encode_jpeg(draw_scene(scene))
        name = f"shape_{i:06d}.jpg"
        _write_bytes(images / name, data)
        caption = captions(scene, languages[i], rng, count=1)[0]
        rows.append((f"{base}/{name}", caption))
        good.append((scene, data, caption))

    def add_bad(kind: str, name: str, caption: str | None, data: bytes | None, url: str | None = None) -> None:
        if data is not None:
            _write_bytes(images / name, data)
        url = f"{base}/{name}" if url is None else url
        rows.append((url, caption))
        bad_rows[kind].append(url)

    for k in range(BAD_ROWS_PER_KIND):
        # Each bad row has its own scene, so no two bad rows share image
        # bytes (which would make them duplicates as well) and any caption
        # a bad row carries is still true of something.
        def scene_for(kind: str, **size: int) -> tuple[Scene, random.Random]:
            rng = _scene_rng(seed, f"bad-rows/{kind}", k)
            return make_scene(rng, **size), rng

        def english(scene: Scene, rng: random.Random) -> str:
            return captions(scene, "en", rng, count=1)[0]

        scene, rng = scene_for("dead_url")
        add_bad("dead_url", f"gone_{k:03d}.jpg", english(scene, rng), None)
        scene, rng = scene_for("not_image")
        add_bad("not_image", f"not_image_{k:03d}.jpg", english(scene, rng), _NOT_AN_IMAGE)
        scene, rng = scene_for("tiny_image", width=64, height=64)
        tiny = draw_scene(scene).resize((8, 8), Image.Resampling.BOX)
        add_bad("tiny_image", f"tiny_{k:03d}.jpg", english(scene, rng), encode_jpeg(tiny))
        scene, rng = scene_for("empty_caption")
        add_bad("empty_caption", f"empty_caption_{k:03d}.jpg", "", encode_jpeg(draw_scene(scene)))
        scene, rng = scene_for("null_caption")
        add_bad("null_caption", f"null_caption_{k:03d}.jpg", None, encode_jpeg(draw_scene(scene)))
        scene, rng = scene_for("foreign_caption")
        add_bad("foreign_caption", f"foreign_caption_{k:03d}.jpg", _foreign_caption(scene, k), encode_jpeg(draw_scene(scene)))
        width, height = EXTREME_SIZES[k % len(EXTREME_SIZES)]
        scene, rng = scene_for("extreme_aspect", width=width, height=height)
        add_bad("extreme_aspect", f"extreme_aspect_{k:03d}.jpg", english(scene, rng), encode_jpeg(draw_scene(scene)))

    if good:
        pick = random.Random(f"shapes-world/{seed}/duplicates")
        exact = pick.sample(range(len(good)), min(BAD_ROWS_PER_KIND, len(good)))
        for k, i in enumerate(exact):
            scene, data, original = good[i]
            others = [c for c in captions(scene, "en", pick, count=10) if c != original]
            add_bad("duplicate_image", f"duplicate_{k:03d}.jpg", others[0], data)
        # Near copies come from other good rows than the exact ones, so each planted row has
        # one original only, and from scenes of two or more shapes: one shape on a plain
        # background is the same picture as another scene's shape of that kind in that place,
        # up to colour, so its copy could as well be taken for a copy of that other scene.
        pick = random.Random(f"shapes-world/{seed}/near-duplicates")
        rest = [i for i, (scene, _, _) in enumerate(good) if i not in exact and len(scene.shapes) > 1]
        for k, i in enumerate(pick.sample(rest, min(BAD_ROWS_PER_KIND, len(rest)))):
            scene, _, original = good[i]
            image = draw_scene(scene)
            smaller = (round(scene.width * NEAR_DUPLICATE_SCALE), round(scene.height * NEAR_DUPLICATE_SCALE))
            data = encode_jpeg(image.resize(smaller, Image.Resampling.LANCZOS), quality=NEAR_DUPLICATE_QUALITY)
            others = [c for c in captions(scene, "en", pick, count=10) if c != original]
            add_bad("near_duplicate_image", f"near_duplicate_{k:03d}.jpg", others[0], data)

    if messy:
        _add_messy_rows(add_bad, seed, port)

    # Bad rows are scattered through the list, as they would be in a real
    # crawl, so every download shard meets some.
    random.Random(f"shapes-world/{seed}/row-order").shuffle(rows)
    table = pa.table(
        {
            "url": pa.array([url for url, _ in rows], pa.string()),
            "caption": pa.array([caption for _, caption in rows], pa.string()),
        }
    )
    _write_parquet(out / "urls.parquet", table)
    row_kinds = {"good": pair_scenes, **{kind: len(urls) for kind, urls in bad_rows.items()}}
    return {
        "file": "urls.parquet",
        "messy": messy,
        "rows": len(rows),
        "row_kinds": row_kinds,
        "good_caption_languages": {"en": pair_scenes - zh_rows, "zh": zh_rows},
        "bad_rows": bad_rows,
    }


def _add_messy_rows(add_bad, seed: int, port: int) -> None:
    """BAD_ROWS_PER_KIND rows of each MESSY_ROW_KINDS kind, each with its own scene and a caption true of it."""
    server = f"http://127.0.0.1:{port}"
    faults = {"redirect_to_private": "redirect-private", "server_error": "server-error", "slow_server": "slow",
              "stalled_server": "stall", "truncated_body": "truncated", "oversized_body": "oversized",
              "decompression_bomb": "bomb"}
    for k in range(BAD_ROWS_PER_KIND):
        def caption_for(kind: str, lang: str = "en", count: int = 1) -> list[str]:
            rng = _scene_rng(seed, f"messy-rows/{kind}", k)
            return captions(make_scene(rng), lang, rng, count=count)

        malformed = ("not a url", f"ftp://127.0.0.1:{port}/images/ftp_{k:03d}.jpg", f"http://[127.0.0.1:{port}/x.jpg")
        add_bad("malformed_url", "", caption_for("malformed_url")[0], None, url=malformed[k])
        # 127.0.0.2 is loopback but outside 127.0.0.1/32, and nothing listens there
        add_bad("private_address", "", caption_for("private_address")[0], None,
                url=f"http://127.0.0.2:{port}/images/private_{k:03d}.jpg")
        # port 1 (tcpmux) on loopback: nothing listens, so the connection is refused
        add_bad("unreachable_host", "", caption_for("unreachable_host")[0], None,
                url=f"http://127.0.0.1:1/images/unreachable_{k:03d}.jpg")
        for kind, fault in faults.items():
            add_bad(kind, "", caption_for(kind)[0], None, url=f"{server}/faults/{fault}/{kind}_{k:03d}.jpg")
        add_bad("corrupt_image", f"corrupt_{k:03d}.jpg", caption_for("corrupt_image")[0], corrupt_jpeg(k))

        rng = _scene_rng(seed, "messy-rows/junk_caption", k)
        scene = make_scene(rng)
        true = captions(scene, "en", rng, count=1)[0]
        junk = (f"{true} Buy now at https://shop.example.com/item/{k}",
                f"<p class=\"caption\">{true}</p>",
                "photo photo photo photo photo photo " + true.split()[0])[k]
        add_bad("junk_caption", f"junk_caption_{k:03d}.jpg", junk, encode_jpeg(draw_scene(scene)))

        rng = _scene_rng(seed, "messy-rows/caption_length", k)
        scene = make_scene(rng)
        if k == 0:  # over 77 words: every distinct English caption of the scene, twice, as pasted alt text can be
            text = " ".join(captions(scene, "en", rng, count=40) * 2)
        elif k == 1:  # under 3 words
            text = " ".join(captions(scene, "en", rng, count=1)[0].split()[:2])
        else:  # under 4 Chinese characters
            text = captions(scene, "zh", rng, count=1)[0][:3]
        add_bad("caption_length", f"caption_length_{k:03d}.jpg", text, encode_jpeg(draw_scene(scene)))


# ---------------------------------------------------------------- COCO and VQAv2


def category_id(colour: str, kind: str) -> int:
    """The instances category of a look; categories are colour x kind so boxes can be referred to by colour."""
    return SHAPE_KINDS.index(kind) * len(COLOURS) + COLOURS.index(colour) + 1


def _categories() -> list[dict]:
    return [
        {"supercategory": kind, "id": category_id(colour, kind), "name": f"{colour} {kind}"}
        for kind in SHAPE_KINDS
        for colour in COLOURS
    ]


def _coco_info(seed: int, what: str) -> dict:
    return {
        "description": f"Loom shapes world (synthetic, seed {seed}): {what}",
        "url": "",
        "version": "1.0",
        "year": 2014,
        "contributor": "Loom shapes world generator",
        "date_created": "2014-01-01 00:00:00",
    }


def _vqa_info(seed: int) -> dict:
    return {
        "description": f"Loom shapes world (synthetic, seed {seed}) in the VQA v2.0 format.",
        "url": "",
        "version": "2.0",
        "year": 2017,
        "contributor": "Loom shapes world generator",
        "date_created": "2017-01-01 00:00:00",
    }


def _write_coco_split(out: Path, seed: int, subtype: str, first_image_id: int, scene_count: int) -> dict:
    images, caption_rows, instance_rows, question_rows, answer_rows = [], [], [], [], []
    for i in range(scene_count):
        image_id = first_image_id + i
        rng = _scene_rng(seed, subtype, i)
        scene = make_scene(rng)
        file_name = f"COCO_{subtype}_{image_id:012d}.jpg"
        _write_bytes(out / "coco" / subtype / file_name, encode_jpeg(draw_scene(scene)))
        images.append(
            {
                "license": _IMAGE_LICENSE["id"],
                "file_name": file_name,
                "coco_url": "",
                "height": scene.height,
                "width": scene.width,
                "date_captured": "2014-01-01 00:00:00",
                "flickr_url": "",
                "id": image_id,
            }
        )
        for j, caption in enumerate(captions(scene, "en", rng, count=CAPTIONS_PER_IMAGE)):
            caption_rows.append({"image_id": image_id, "id": image_id * 10 + j, "caption": caption})
        for j, shape in enumerate(scene.shapes):
            polygon = [round(v, 2) for point in outline(shape) for v in point]
            instance_rows.append(
                {
                    "segmentation": [polygon],
                    "area": round(area(shape), 2),
                    "iscrowd": 0,
                    "image_id": image_id,
                    "bbox": [float(shape.x0), float(shape.y0), float(shape.x1 - shape.x0), float(shape.y1 - shape.y0)],
                    "category_id": category_id(shape.colour, shape.kind),
                    "id": image_id * 100 + j,
                }
            )
        for k, qa in enumerate(questions(scene, rng)):
            question_id = image_id * 1000 + k
            question_rows.append({"image_id": image_id, "question": qa["question"], "question_id": question_id})
            answer_rows.append(
                {
                    "question_type": qa["question_type"],
                    "multiple_choice_answer": qa["answer"],
                    "answers": [
                        {"answer": qa["answer"], "answer_confidence": "yes", "answer_id": n}
                        for n in range(1, ANSWERS_PER_QUESTION + 1)
                    ],
                    "image_id": image_id,
                    "answer_type": qa["answer_type"],
                    "question_id": question_id,
                }
            )

    annotations = out / "coco" / "annotations"
    licenses = [_IMAGE_LICENSE]
    _write_json(
        annotations / f"captions_{subtype}.json",
        {"info": _coco_info(seed, "captions"), "licenses": licenses, "images": images, "annotations": caption_rows},
    )
    _write_json(
        annotations / f"instances_{subtype}.json",
        {
            "info": _coco_info(seed, "instances"),
            "licenses": licenses,
            "images": images,
            "annotations": instance_rows,
            "categories": _categories(),
        },
    )
    vqav2 = out / "vqav2"
    _write_json(
        vqav2 / f"v2_OpenEnded_mscoco_{subtype}_questions.json",
        {
            "info": _vqa_info(seed),
            "task_type": "Open-Ended",
            "data_type": "mscoco",
            "license": _VQA_LICENSE,
            "data_subtype": subtype,
            "questions": question_rows,
        },
    )
    _write_json(
        vqav2 / f"v2_mscoco_{subtype}_annotations.json",
        {
            "info": _vqa_info(seed),
            "license": _VQA_LICENSE,
            "data_subtype": subtype,
            "data_type": "mscoco",
            "annotations": answer_rows,
        },
    )
    return {
        "images": len(images),
        "captions": len(caption_rows),
        "instances": len(instance_rows),
        "questions": len(question_rows),
    }


# ---------------------------------------------------------------- everything


def write_demo_data(
    out_dir: str | os.PathLike,
    seed: int = 0,
    pair_scenes: int = DEFAULT_PAIR_SCENES,
    train_scenes: int = DEFAULT_TRAIN_SCENES,
    val_scenes: int = DEFAULT_VAL_SCENES,
    port: int | None = None,
    messy: bool = False,
) -> dict:
    """Write the whole shapes world under `out_dir` and return what world.json records.

    `port` is the loopback port the URL list points at; None picks one that
    is free now. Serve it later with `serve_demo_world(out_dir)`. `messy` adds
    MESSY_ROW_KINDS rows to the URL list: broken URLs and captions, and
    servers that misbehave (faults.py).
    """
    for name, value in (("pair_scenes", pair_scenes), ("train_scenes", train_scenes), ("val_scenes", val_scenes)):
        if value < 0:
            raise ValueError(f"write_demo_data: {name} = {value}; expected a count >= 0")
    if train_scenes >= VAL_FIRST_IMAGE_ID - TRAIN_FIRST_IMAGE_ID:
        raise ValueError(
            f"write_demo_data: train_scenes = {train_scenes}; expected fewer than "
            f"{VAL_FIRST_IMAGE_ID - TRAIN_FIRST_IMAGE_ID} so train and val image ids stay apart"
        )
    if port is None:
        port = pick_free_port()
    elif not 1 <= port <= 65535:
        raise ValueError(f"write_demo_data: port = {port}; expected 1-65535")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = {
        "generator": "loom shapes world",
        "seed": seed,
        "port": port,
        "base_url": f"http://127.0.0.1:{port}",
        "scenes": {"pairs": pair_scenes, "train2014": train_scenes, "val2014": val_scenes},
        "urls": _write_url_list(out, seed, pair_scenes, port, messy),
        "coco": {
            "train2014": _write_coco_split(out, seed, "train2014", TRAIN_FIRST_IMAGE_ID, train_scenes),
            "val2014": _write_coco_split(out, seed, "val2014", VAL_FIRST_IMAGE_ID, val_scenes),
        },
    }
    _write_json(out / "world.json", world, indent=2)
    return world
