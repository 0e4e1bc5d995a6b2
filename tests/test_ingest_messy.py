"""`loom ingest` on a messy web: every kind of bad row a crawl meets, in one URL list, through the
shipped messy config (jobs/configs/messy.yaml), on Ray, img2dataset and the loopback server."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.config import load_config
from jobs.run import run_stages
from pipelines.ingest.shards import read_pairs_index
from pipelines.shapes_world.export import BAD_ROW_KINDS, MESSY_ROW_KINDS

CONFIG = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "messy.yaml"
# what each planted kind of row must be dropped as (duplicates: see test_ingest_job.py)
EXPECTED_REASON = {
    "dead_url": "http_404", "not_image": "not_image", "tiny_image": "too_small", "empty_caption": "caption_empty",
    "null_caption": "caption_missing", "foreign_caption": "language", "extreme_aspect": "aspect",
    "malformed_url": "malformed_url", "private_address": "private_network", "redirect_to_private": "private_network",
    "unreachable_host": "unreachable",
    "server_error": "http_500", "slow_server": "timeout", "stalled_server": "timeout", "truncated_body": "truncated",
    "oversized_body": "too_large", "decompression_bomb": "too_many_pixels", "corrupt_image": "not_image",
    "junk_caption": "caption_junk", "caption_length": "caption_length",
}


@pytest.fixture(scope="module")
def messy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("messy")
    config = load_config(str(CONFIG), str(out))
    config["demo_data"]["pair_scenes"] = 60
    config["ingest"].update(samples_per_shard=40, download_shard_size=40)
    run_stages(config, str(out), ["demo_data", "ingest"], log=lambda *_: None)
    world = __import__("json").loads((out / "demo" / "world.json").read_text())
    dropped = pq.read_table(out / "ingest" / "dropped").to_pylist()
    manifest = __import__("json").loads((out / "ingest" / "manifest.json").read_text())
    return world, out, dropped, manifest


def test_the_messy_world_plants_every_kind():
    assert set(EXPECTED_REASON) == set(BAD_ROW_KINDS + MESSY_ROW_KINDS) - {"duplicate_image", "near_duplicate_image"}


@pytest.mark.parametrize("kind", sorted(EXPECTED_REASON))
def test_each_planted_row_is_dropped_with_its_reason(messy_run, kind):
    world, _, dropped, _ = messy_run
    by_url = {r["url"]: r["reason"] for r in dropped}
    planted = world["urls"]["bad_rows"][kind]
    assert len(planted) == 3
    assert {url: by_url.get(url) for url in planted} == {url: EXPECTED_REASON[kind] for url in planted}


def test_every_input_row_is_kept_or_dropped_exactly_once(messy_run):
    world, out, dropped, manifest = messy_run
    kept = read_pairs_index(out / "ingest")["row_id"].to_pylist()
    ids = kept + [r["row_id"] for r in dropped]
    assert len(ids) == len(set(ids)) == world["urls"]["rows"] == manifest["rows_in"]


def test_only_planted_copies_and_the_mix_cost_good_rows(messy_run):
    _, _, dropped, manifest = messy_run
    good = {r["reason"].split(" ")[0] for r in dropped if "/images/shape_" in r["url"]}
    assert good <= {"mix_downsampled", "duplicate_of"}
    assert manifest["dropped"]["duplicate"] == 6  # 3 exact and 3 near copies, one of each pair


def test_download_failures_keep_the_servers_words(messy_run):
    _, _, dropped, _ = messy_run
    details = {r["reason"]: r["detail"] for r in dropped if r["stage"] == "download"}
    assert "HTTP Error 500" in details["http_500"]
    assert "127.0.0.2" in details["private_network"]
    assert details["too_large"] and details["too_many_pixels"] and details["timeout"]


def test_the_distributed_decisions_equal_the_global_algorithm_row_for_row(messy_run):
    from decision_oracle import distributed_decisions, oracle_decisions

    world, out, _, manifest = messy_run
    config = load_config(str(CONFIG), str(out))["ingest"]
    oracle = oracle_decisions(out / "ingest", config.get("languages", {"en": 0.773, "zh": 0.227}),
                              seed=config.get("seed", 0))
    assert distributed_decisions(out / "ingest") == oracle and len(oracle) > 0
