"""Instruction records with each image replaced by its scene written out: the text an LLM pretrains on to
answer from a description in its prompt (`loom lm`).

A render output holds, for the same image, caption records (what is in it) and question records (what is
asked of it). Writing an image's captions where its `<image>` stood turns a question record into "a
scene, described; a question about it; the answer", true by construction on the shapes world. An LLM
pretrained on such text has learned to read a scene from its context, so when it is later frozen behind a
Q-Former or projector (BLIP-2, InstructBLIP, MiniGPT-4), the visual tokens in that same slot have something
to steer: the connector learns to say what the description would.

The description is 1 to all of the image's captions in a seeded order (a caption record's own caption never
among them), so the LLM reads short and long descriptions and the answer never sits at one position.
A record whose image has no caption is dropped as 'no_caption_of_image'; a caption record whose image has
no other caption as 'no_other_caption'.
"""
from __future__ import annotations

import collections
import random
import re

IMAGE = re.compile(r"<image>\n?")


def image_identity(image: dict) -> tuple:
    """One image however a record refers to it: its root and path, or its pairs shard and key, or its URL."""
    return (image.get("root"), image.get("path"), image.get("shard"), image.get("key"), image.get("url"))


def scene_captions(records: list[dict]) -> dict[tuple, list[str]]:
    """Each image's captions (the assistant turns of its single-image caption records), in record order."""
    captions: dict[tuple, list[str]] = collections.defaultdict(list)
    for record in records:
        if record["task"] == "captioning" and len(record["images"]) == 1:
            captions[image_identity(record["images"][0])] += [m["content"] for m in record["messages"]
                                                              if m["role"] == "assistant"]
    return dict(captions)


def without_images(record: dict, description: str = "") -> dict:
    """`record` with every `<image>` in its turns replaced by `description` (removed when empty) and no images."""
    text = f"{description}\n" if description else ""
    messages = [{**m, "content": IMAGE.sub(lambda _: text, m["content"])} for m in record["messages"]]
    return {**record, "messages": messages, "images": []}


def describe(captions: list[str], rng: random.Random) -> str:
    """1 to all of `captions`, drawn and ordered by `rng`, as one paragraph."""
    return " ".join(rng.sample(captions, rng.randint(1, len(captions))))


def described_records(records: list[dict], seed: int, plain_captions: bool = True,
                      captions: dict[tuple, list[str]] | None = None) -> tuple[list[dict], dict[str, int]]:
    """(text records, dropped counts by reason): every single-image record of `records` with its image
    written out as a description of its scene (`captions`: each image's captions, default those among
    `records`); with `plain_captions`, each caption also once with no image and no description, so the
    LLM is also a plain language model of captions. Each record's draw depends on `seed` and its id alone."""
    captions = scene_captions(records) if captions is None else captions
    rows, dropped = [], collections.Counter()
    for record in records:
        if len(record["images"]) != 1:
            dropped["not_one_image"] += 1
            continue
        pool = sorted(captions.get(image_identity(record["images"][0]), ()))  # so record order never matters
        if record["task"] == "captioning":
            own = [m["content"] for m in record["messages"] if m["role"] == "assistant"]
            pool = [c for c in pool if c not in own]
            if plain_captions:
                rows.append({**without_images(record), "id": f"{record['id']}:plain"})
        if not pool:
            dropped["no_other_caption" if record["task"] == "captioning" and captions.get(
                image_identity(record["images"][0])) else "no_caption_of_image"] += 1
            continue
        rng = random.Random(f"{seed}:{record['id']}")
        rows.append({**without_images(record, describe(pool, rng)), "id": f"{record['id']}:described"})
    return rows, dict(dropped)


def shapes_world_text(scenes: int, seed: int, captions_per_scene: int = 5) -> list[dict]:
    """Instruction records of `scenes` text-only shapes-world scenes, none of them drawn: each scene's captions
    (COCO Captions' task) and its questions (VQAv2's), worded by Loom's own templates as render words them, its
    image a reference to nothing (`shapes-text/N`) that `described_records` replaces by its captions. A corpus
    for an LLM of the shapes world far larger than a render's images give, sharing no scene with them."""
    from pipelines.render import render_record
    from pipelines.shapes_world.scenes import captions, make_scene, questions

    rng = random.Random(f"shapes-text:{seed}")
    rows = []
    for n in range(scenes):
        scene = make_scene(rng)
        image = {"root": "shapes-text", "path": str(n), "width": scene.width, "height": scene.height}
        header = {"split": "train", "lang": "en", "image": image}
        natives = [{**header, "id": f"coco_caption:shapes-text:{n}:{k}", "dataset": "coco_caption",
                    "task": "captioning", "caption": caption}
                   for k, caption in enumerate(captions(scene, "en", rng, count=captions_per_scene))]
        natives += [{**header, "id": f"vqav2:shapes-text:{n}:{k}", "dataset": "vqav2", "task": "vqa",
                     "question": qa["question"], "answer": qa["answer"], "answers": [qa["answer"]] * 10,
                     "answer_type": qa["answer_type"], "question_type": qa["question_type"]}
                    for k, qa in enumerate(questions(scene, rng))]
        rows += [render_record(native, seed) for native in natives]
    return rows
