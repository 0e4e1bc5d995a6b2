"""`loom templates preview|stats`: rendered examples and figures for template authors."""
from __future__ import annotations

import random
import tempfile
from pathlib import Path

from jobs.config import ConfigError, load_config


def sample_records(task: str, lang: str, count: int, seed: int, config: str | None = None,
                   dataset: str | None = None) -> list[dict]:
    """`count` canonical records of `task` in `lang`: from the datasets a render config names (optionally one
    card or adapter), or, without a config, from a small shapes world written to a temporary folder."""
    if config:
        from jobs.render import read_records, render_settings

        records = []
        for entry in render_settings(load_config(config, tempfile.gettempdir()))["datasets"]:
            if dataset in (None, entry.get("card"), entry.get("adapter")):
                records += [r for r in read_records(entry) if r["task"] == task and r["lang"] == lang]
        if not records:
            raise ConfigError(f"{config}: render.datasets gives no {lang} {task} record"
                              + (f" from {dataset}" if dataset else ""))
    else:
        records = _shapes_world_records(task, lang, count, seed)
    random.Random(seed).shuffle(records)
    return records[:count]


def _shapes_world_records(task: str, lang: str, count: int, seed: int) -> list[dict]:
    from pipelines.shapes_world.draw import draw_scene, encode_jpeg
    from pipelines.shapes_world.scenes import captions, make_scene, questions

    folder = Path(tempfile.mkdtemp(prefix="loom-preview-"))
    records = []
    for i in range(count):
        rng = random.Random(f"loom-preview/{seed}/{i}")
        scene = make_scene(rng)
        image = folder / f"scene_{i:03d}.jpg"
        image.write_bytes(encode_jpeg(draw_scene(scene)))
        base = {"id": f"shapes:{task}:{i}", "dataset": "shapes_world", "task": task, "split": "train", "lang": lang,
                "image": {"path": str(image), "width": scene.width, "height": scene.height}}
        if task == "captioning":
            records.append({**base, "caption": captions(scene, lang, rng, count=1)[0]})
        elif task == "vqa" and lang == "en":
            qa = rng.choice(questions(scene, rng))
            records.append({**base, "question": qa["question"], "answer": qa["answer"], "answers": [qa["answer"]]})
        else:
            raise ConfigError(f"loom templates preview: no built-in shapes-world sample of {lang} {task} records; "
                              "pass --config with a render config whose render.datasets hold such a dataset")
    return records


def print_preview(task: str, lang: str, count: int, seed: int, chat: str, config: str | None,
                  dataset: str | None) -> None:
    from templates.authoring import TARGET_CLOSE, TARGET_OPEN, preview
    from templates.chat import get_chat_format

    try:
        chat_format = get_chat_format(chat)
    except ValueError as err:
        raise ConfigError(f"--chat: {err}") from err
    for example in preview(sample_records(task, lang, count, seed, config, dataset), chat_format, seed):
        print(example, end="\n\n")
    print(f"(in the {chat} chat format; the model is trained on the text between {TARGET_OPEN} and {TARGET_CLOSE})")


def print_stats(tokenizer: str | None) -> None:
    from templates.authoring import template_stats

    count_tokens = None
    if tokenizer:
        from tokenizers import Tokenizer

        path = Path(tokenizer)
        path = path / "tokenizer.json" if path.is_dir() else path
        if not path.is_file():
            raise ConfigError(f"--tokenizer: {tokenizer}: no tokenizer.json there")
        loaded = Tokenizer.from_file(str(path))
        count_tokens = lambda text: len(loaded.encode(text).ids)  # noqa: E731
    print(f"{'task':22} {'lang':4} {'templates':>9}  {'short/long/none':15}  prompt length (min/median/max)")
    for row in template_stats(count_tokens):
        b, n = row["brevity"], row["length"]
        lengths = f"{n['min']}/{n['median']:g}/{n['max']} {row['unit']}"
        if "tokens" in row:
            t = row["tokens"]
            lengths += f", {t['min']}/{t['median']:g}/{t['max']} tokens"
        print(f"{row['task']:22} {row['lang']:4} {row['templates']:>9}  {b['short']}/{b['long']}/{b['none']:<11}  {lengths}")
