"""The 26 InstructBLIP dataset cards, and `loom catalog list --task/--held-in/--held-out`."""
from __future__ import annotations

import importlib

import pytest
import yaml

from catalog.cards import TASKS, CardError, load_cards, select_cards
from jobs.cli import main as loom

# As issue 4 pins them from the paper (Figure 2; held-out per its zero-shot table), by card name.
HELD_IN = {"coco_caption", "web_capfilt", "textcaps", "vqav2", "okvqa", "aokvqa", "ocrvqa", "vqg_vqav2",
           "vqg_okvqa", "vqg_aokvqa", "llava_conversation", "llava_detail", "llava_complex_reasoning"}
HELD_OUT = {"nocaps", "flickr30k", "gqa", "vsr", "iconqa", "textvqa", "visdial", "hateful_memes", "vizwiz",
            "scienceqa", "msvd_qa", "msrvtt_qa", "ivqa"}


@pytest.fixture(scope="module")
def datasets():
    return select_cards(load_cards(), kind="dataset")


def test_there_is_a_card_for_each_of_the_26_datasets_with_its_role(datasets):
    assert len(HELD_IN) == len(HELD_OUT) == 13
    assert {name: card["held"] for name, card in datasets.items()} == {
        **{name: "held-in" for name in HELD_IN}, **{name: "held-out" for name in HELD_OUT}}


def test_the_cards_cover_the_11_task_categories(datasets):
    assert {task for card in datasets.values() for task in card["tasks"]} == set(TASKS)
    assert len(TASKS) == 11


def test_every_card_says_where_it_comes_from_and_what_is_unchecked(datasets):
    for name, card in datasets.items():
        assert card["native_format"]["files"] and card["native_format"]["schema"], name
        assert card["source"].startswith("http") and card["citation"] and card["license"], name
        assert card["read_at"] and isinstance(card.get("unverified", []), list), name
        if card["held"] == "held-out":  # what InstructBLIP scores it on
            assert card["instructblip"]["eval_split"] and card["instructblip"]["metric"], name


def test_a_named_adapter_imports(datasets):
    for name, card in datasets.items():
        if card["adapter"]:
            module, _, function = card["adapter"].rpartition(".")
            assert callable(getattr(importlib.import_module(module), function)), name


def listed(capsys, *flags) -> set[str]:
    assert loom(["catalog", "list", *flags]) == 0
    return {line.split()[0] for line in capsys.readouterr().out.splitlines()}


def test_catalog_list_filters_by_task_and_role(capsys):
    assert listed(capsys, "--task", "vqa") == {"vqav2", "vizwiz"}
    assert listed(capsys, "--task", "vqa", "--held-in") == {"vqav2"}
    assert listed(capsys, "--held-out") == HELD_OUT
    assert listed(capsys, "--task", "video_qa", "--held-in") == set()


def test_catalog_list_marks_datasets_without_an_adapter(capsys):
    assert loom(["catalog", "list", "--kind", "dataset"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    pending = {name for name, card in load_cards().items() if "tasks" in card and not card["adapter"]}
    assert {name for name, line in lines.items() if line.endswith("(adapter not built yet)")} == pending


@pytest.mark.parametrize("change, message", [
    ({"tasks": ["captions"]}, "tasks is ['captions']"),
    ({"instructblip": {"role": "held-out"}}, "instructblip.role is 'held-out' but held is 'held-in'"),
    ({"adapter": "read_everything"}, "adapter is 'read_everything'"),
])
def test_a_malformed_dataset_card_is_refused_naming_the_file_and_field(tmp_path, change, message):
    card = {**load_cards()["vqav2"], **change}
    (tmp_path / "vqav2.yaml").write_text(yaml.safe_dump(card))
    with pytest.raises(CardError, match="vqav2.yaml") as refused:
        load_cards(tmp_path)
    assert message in str(refused.value)


def test_a_template_a_card_requires_is_one_of_its_tasks(datasets):
    from templates.library import template_by_id

    required = {name: card["requires_template"] for name, card in datasets.items() if card.get("requires_template")}
    assert required == {"vsr": "vr_eval_statement"}
    for name, template_id in required.items():
        assert template_by_id(template_id).task in datasets[name]["tasks"], name
