"""The whole InstructBLIP corpus from fixtures: 26 datasets in their native formats rendered by one config
(held-in into the square-root mixture, held-out as evaluation sets), and laid out in every chat format."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from catalog.cards import load_cards, select_cards
from jobs.config import load_config
from jobs.render import run_render
from templates.chat import FORMATS_DIR, get_chat_format

BIN = Path(sys.executable).parent
FORMATS = sorted(p.stem for p in FORMATS_DIR.glob("*.yaml"))
CARDS = load_cards()
DATASETS = sorted(select_cards(CARDS, kind="dataset"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """`loom demo-data --instructblip` and `loom render` on what it wrote, as a user runs them."""
    root = tmp_path_factory.mktemp("instructblip")
    subprocess.run([str(BIN / "loom"), "demo-data", str(root / "fixtures"), "--instructblip", "--scenes", "6"],
                   check=True, capture_output=True, text=True)
    config = load_config(str(root / "fixtures" / "render.yaml"), str(root / "run"))
    manifest = run_render(config, root / "run", log=lambda *_: None)
    tables = {name: pq.read_table(root / "run" / "render" / name) for name in manifest["files"]}
    return {"root": root, "config": config, "manifest": manifest,
            "rows": [row for table in tables.values() for row in table.to_pylist()]}


def test_every_dataset_is_rendered_held_in_into_the_mixture_and_held_out_from_an_evaluation_split(corpus):
    rows, manifest = corpus["rows"], corpus["manifest"]
    by_dataset = {}
    for row in rows:
        by_dataset.setdefault(row["dataset"], set()).add(row["split"])
    assert sorted(by_dataset) == DATASETS
    held_in = [d for d in DATASETS if CARDS[d]["held"] == "held-in"]
    assert len(held_in) == 13 and sorted(manifest["mixture"]) == held_in
    total = sum(m["records"] for m in manifest["mixture"].values())
    for name, mixed in manifest["mixture"].items():
        assert by_dataset[name] == {"train"}
        assert abs(mixed["realised_share"] - mixed["target_share"]) <= 1 / total, name
    for name in set(DATASETS) - set(held_in):
        assert "train" not in by_dataset[name] and len(by_dataset[name]) == 1, (name, by_dataset[name])


def test_evaluation_sets_use_the_evaluation_prompts_they_need(corpus):
    templates = {}
    for row in corpus["rows"]:
        templates.setdefault(row["dataset"], set()).add(row["template_id"])
    assert templates["vsr"] == {"vr_eval_statement"}  # statements, which the drawable templates cannot ask
    assert templates["scienceqa"] == {"kvqa_eval_multiple_choice"}
    assert templates["llava_detail"] == {"native"}  # conversations pass through as InstructBLIP uses them
    assert len(templates["vqav2"]) > 3  # training data draws its templates


@pytest.mark.parametrize("name", FORMATS)
def test_the_whole_corpus_lays_out_in_every_chat_format(corpus, name):
    fmt = get_chat_format(name)
    for row in corpus["rows"]:
        pieces = fmt.pieces(row["messages"], task=row["task"])
        text = "".join(piece for piece, _ in pieces)
        assert text.count("<image>") == len(row["images"]), (name, row["id"])
        trained = "".join(piece for piece, target in pieces if target)
        assert row["messages"][-1]["content"] in trained, (name, row["id"])


def test_the_config_names_each_dataset_once_with_its_split(corpus):
    entries = yaml.safe_load((corpus["root"] / "fixtures" / "render.yaml").read_text())["render"]["datasets"]
    assert sorted(e["card"] for e in entries) == DATASETS
    assert all(Path(v).exists() for e in entries for k, v in e.items() if k.endswith(("_file", "_root")))
