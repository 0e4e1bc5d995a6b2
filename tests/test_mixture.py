"""The training mixture: InstructBLIP's sqrt-of-size sampling with adjustments, realised as record counts."""
from __future__ import annotations

import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.config import ConfigError
from jobs.render import run_render
from pipelines.mixture import DEFAULT_ADJUSTMENTS, draw, plan_counts, target_shares
from pipelines.shapes_world.formats.aokvqa import write_aokvqa
from pipelines.shapes_world.formats.okvqa import write_okvqa
from pipelines.shapes_world.formats.vizwiz import write_vizwiz


def test_shares_follow_the_square_root_of_size_times_the_adjustment():
    shares = target_shares({"vqav2": 400, "textcaps": 100, "okvqa": 25}, "sqrt", {"okvqa": 2.0})
    assert shares == pytest.approx({"vqav2": 20 / 40, "textcaps": 10 / 40, "okvqa": 10 / 40})
    assert target_shares({"a": 3, "b": 1}, "size") == pytest.approx({"a": 0.75, "b": 0.25})
    assert DEFAULT_ADJUSTMENTS["aokvqa"] < 1 < DEFAULT_ADJUSTMENTS["okvqa"]  # the paper's direction


def test_counts_add_up_to_the_total_exactly():
    counts = plan_counts({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, 100)
    assert sum(counts.values()) == 100 and sorted(counts.values()) == [33, 33, 34]


def test_a_dataset_drawn_past_its_size_repeats_every_record_before_any_twice():
    picks = draw([f"r{i}" for i in range(10)], 25, seed=0)
    per_record = [sum(1 for i, _ in picks if i == k) for k in range(10)]
    assert len(picks) == 25 and set(per_record) == {2, 3} and len(set(picks)) == 25


def test_a_subset_is_deterministic_by_seed():
    ids = [f"r{i}" for i in range(50)]
    assert draw(ids, 10, seed=1) == draw(ids, 10, seed=1) != draw(ids, 10, seed=2)
    assert all(rep == 0 for _, rep in draw(ids, 10, seed=1))


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    out = tmp_path_factory.mktemp("mixture")
    return {"okvqa": write_okvqa(out / "okvqa", seed=1, scenes=12)["train2014"],
            "aokvqa": write_aokvqa(out / "aokvqa", seed=1, scenes=12),
            "vizwiz": write_vizwiz(out / "vizwiz", seed=1, scenes=8)}


def entries(f):
    ok, aok, viz = f["okvqa"], f["aokvqa"], f["vizwiz"]
    return [
        {"card": "okvqa", "questions_file": ok["questions_file"], "annotations_file": ok["annotations_file"],
         "image_root": ok["images"]},
        {"card": "aokvqa", "annotation_file": aok["train"]["file"], "image_root": str(Path(aok["train"]["images"]).parent)},
        {"card": "vizwiz", "annotation_file": viz["files"]["val"], "image_root": viz["image_folders"]["val"],
         "split": "val"},  # held out: an evaluation set, rendered once, never mixed
    ]


def rendered(out, manifest):
    return {f: pq.read_table(out / "render" / f).to_pylist() for f in manifest["files"]}


def test_the_rendered_corpus_realises_the_target_mixture(fixtures, tmp_path):
    manifest = run_render({"render": {"seed": 3, "datasets": entries(fixtures),
                                      "mixture": {"total": 200}}}, tmp_path, log=lambda *_: None)
    mixture = manifest["mixture"]
    sizes = {d: mixture[d]["size"] for d in ("okvqa", "aokvqa")}
    weights = {d: math.sqrt(sizes[d]) * DEFAULT_ADJUSTMENTS[d] for d in sizes}
    for d in sizes:
        assert mixture[d]["target_share"] == pytest.approx(weights[d] / sum(weights.values()), abs=1e-6)
        assert abs(mixture[d]["realised_share"] - mixture[d]["target_share"]) <= 1 / 200
    files = rendered(tmp_path, manifest)
    okvqa, aokvqa, vizwiz = files.values()
    assert len(okvqa) + len(aokvqa) == 200 and len(okvqa) == mixture["okvqa"]["records"]
    assert len({r["id"] for r in okvqa}) == len(okvqa) and any("#" in r["id"] for r in okvqa)  # repeats, own ids
    assert "vizwiz" not in mixture and len(vizwiz) == 8  # the evaluation set, every record once


def test_the_same_seed_renders_the_same_corpus_and_another_seed_another(fixtures, tmp_path):
    config = {"render": {"seed": 3, "datasets": entries(fixtures), "mixture": {"total": 30}}}
    a = rendered(tmp_path / "a", run_render(config, tmp_path / "a", log=lambda *_: None))
    b = rendered(tmp_path / "b", run_render(config, tmp_path / "b", log=lambda *_: None))
    config["render"]["seed"] = 4
    c = rendered(tmp_path / "c", run_render(config, tmp_path / "c", log=lambda *_: None))
    assert a == b and a != c


def test_a_held_out_dataset_cannot_enter_the_training_mixture(fixtures, tmp_path):
    held_out = entries(fixtures)[2] | {"split": "train"}
    with pytest.raises(ConfigError, match=r"render.datasets\[0\]: vizwiz is held out in InstructBLIP"):
        run_render({"render": {"datasets": [held_out], "mixture": {}}}, tmp_path)


@pytest.mark.parametrize("mixture, key", [({"weighting": "log"}, "weighting"), ({"total": 0}, "total"),
                                          ({"adjustments": {"okvqa": "x"}}, "adjustments.okvqa"), ({"size": 3}, "mixture")])
def test_a_bad_mixture_is_refused_with_its_key(fixtures, tmp_path, mixture, key):
    with pytest.raises(ConfigError, match=rf"render.mixture(\.{key})?:"):
        run_render({"render": {"datasets": entries(fixtures)[:1], "mixture": mixture}}, tmp_path)


def test_a_dataset_given_as_two_entries_splits_its_count_and_ray_renders_what_this_process_renders(fixtures, tmp_path):
    okvqa = entries(fixtures)[0]
    config = {"render": {"seed": 5, "datasets": [okvqa, okvqa, *entries(fixtures)[1:]], "mixture": {"total": 90}}}
    here = run_render({"render": {**config["render"], "ray": "never"}}, tmp_path / "here", log=lambda *_: None)
    on_ray = run_render({"render": {**config["render"], "ray": "always"}}, tmp_path / "ray", log=lambda *_: None)
    assert on_ray["on_ray"] and not here["on_ray"]
    assert rendered(tmp_path / "here", here) == rendered(tmp_path / "ray", on_ray)
    files = list(rendered(tmp_path / "here", here).values())
    # both OK-VQA entries together give OK-VQA's share, half each: not the share twice over
    assert len(files[0]) + len(files[1]) == here["mixture"]["okvqa"]["records"]
    assert abs(len(files[0]) - len(files[1])) <= 1
    assert len(files[0]) + len(files[1]) + len(files[2]) == 90
