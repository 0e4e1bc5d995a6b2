"""`loom ingest` end to end on a small shapes world: Ray, img2dataset and a loopback HTTP server."""
from __future__ import annotations

import io
import json
import os
import tarfile

import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.config import ConfigError
from jobs.ingest import run_ingest
from pipelines.ingest.shards import read_pairs_index

IMAGE_SIZE = 96


def config_for(world_dir, **overrides):
    ingest = {
        "sources": [{"path": str(world_dir / "urls.parquet"), "url_col": "url", "caption_col": "caption"}],
        "serve": str(world_dir), "allow_private_network": True, "image_size": IMAGE_SIZE,
        "samples_per_shard": 40, "download_shard_size": 50, "seed": 0,
    }
    return {"ingest": {**ingest, **overrides}}


@pytest.fixture(scope="module")
def ingested(small_world, tmp_path_factory):
    world_dir, summary = small_world
    out = tmp_path_factory.mktemp("run")
    manifest = run_ingest(config_for(world_dir), out, log=lambda *_: None)
    return world_dir, summary, out, manifest


def dropped_rows(out):
    return pq.read_table(out / "ingest" / "dropped").to_pylist()


def test_every_input_row_is_kept_or_dropped_exactly_once(ingested):
    world_dir, _, out, manifest = ingested
    inputs = pq.read_table(world_dir / "urls.parquet").num_rows
    kept = read_pairs_index(out / "ingest")["row_id"].to_pylist()
    dropped = [r["row_id"] for r in dropped_rows(out)]
    assert len(kept) + len(dropped) == inputs == manifest["rows_in"]
    assert len(set(kept) | set(dropped)) == inputs
    assert manifest["rows_out"] == len(kept)
    assert sum(manifest["dropped"].values()) == len(dropped)


@pytest.mark.parametrize("kind, reason", [
    ("dead_url", "http_404"), ("not_image", "not_image"), ("tiny_image", "too_small"),
    ("empty_caption", "caption_empty"), ("null_caption", "caption_missing"),
    ("foreign_caption", "language"), ("extreme_aspect", "aspect"),
])
def test_each_planted_bad_row_is_dropped_with_its_reason(ingested, kind, reason):
    _, summary, out, _ = ingested
    by_url = {r["url"]: r["reason"] for r in dropped_rows(out)}
    for url in summary["urls"]["bad_rows"][kind]:
        assert by_url[url].startswith(reason), (url, by_url.get(url))


@pytest.mark.parametrize("kind", ["duplicate_image", "near_duplicate_image"])
def test_of_an_image_and_its_copy_one_is_dropped_naming_the_other(ingested, kind):
    _, summary, out, _ = ingested
    bad = summary["urls"]["bad_rows"]
    dropped = dropped_rows(out)
    url_of = {r["key"]: r["url"] for r in [*read_pairs_index(out / "ingest").to_pylist(), *dropped] if r["key"]}
    key_of = {url: key for key, url in url_of.items()}
    duplicates = {r["url"]: r["reason"] for r in dropped if r["reason"].startswith("duplicate_of ")}
    # exact copies by sha256, near copies (scaled to 90%, saved at q75) by perceptual hash; nothing else
    assert len(duplicates) == len(bad["duplicate_image"]) + len(bad["near_duplicate_image"])
    for url in bad[kind]:
        if url in duplicates:  # the planted copy lost: it names a good row, its original
            assert "/images/shape_" in url_of[duplicates[url].split(" ")[1]]
        else:  # the planted copy came first in key order: its original names it
            assert f"duplicate_of {key_of[url]}" in duplicates.values()


def test_no_good_row_is_lost_except_to_the_language_mix(ingested):
    _, _, out, _ = ingested
    reasons = {r["reason"] for r in dropped_rows(out) if "/images/shape_" in r["url"]}
    # a good image may lose to its planted copy, exact or near; nothing else may drop it
    assert {r.split(" ")[0] for r in reasons} <= {"mix_downsampled", "duplicate_of"}


def test_language_mix_reaches_the_target_within_half_a_point(ingested):
    _, _, out, manifest = ingested
    langs = read_pairs_index(out / "ingest")["lang"].to_pylist()
    assert abs(langs.count("en") / len(langs) - 0.773) <= 0.005
    assert manifest["languages"]["kept_share"]["en"] == pytest.approx(langs.count("en") / len(langs))
    assert manifest["dropped"]["mix_downsampled"] > 0  # the world is 65% English: Chinese was cut


def test_pairs_shards_follow_the_contract(ingested):
    _, _, out, manifest = ingested
    index = read_pairs_index(out / "ingest").to_pylist()
    by_key = {r["key"]: r for r in index}
    members = {}
    for shard in manifest["shards"]:
        with tarfile.open(out / "ingest" / shard) as tar:
            for m in tar:
                members[m.name] = tar.extractfile(m).read()
    assert set(members) == {f"{k}.{ext}" for k in by_key for ext in ("jpg", "txt", "json")}
    for key, row in by_key.items():
        meta = json.loads(members[f"{key}.json"])
        assert set(meta) == {"url", "source", "lang", "width", "height", "original_width",
                             "original_height", "sha256", "phash"}
        assert members[f"{key}.txt"].decode() == row["caption"]
        image = Image.open(io.BytesIO(members[f"{key}.jpg"]))
        # keep_ratio (img2dataset): the shorter side becomes image_size, never upscaled
        assert image.size == (meta["width"], meta["height"]) and min(image.size) <= IMAGE_SIZE


def test_a_rerun_with_the_same_config_is_skipped(ingested):
    world_dir, _, out, manifest = ingested
    shard = out / "ingest" / manifest["shards"][0]
    before = shard.stat().st_mtime_ns
    logs = []
    again = run_ingest(config_for(world_dir), out, log=logs.append)
    assert again == manifest and any("skipped" in line for line in logs)
    assert shard.stat().st_mtime_ns == before


def test_an_interrupted_run_resumes_without_rewriting_finished_shards(ingested, tmp_path):
    world_dir, _, out, manifest = ingested
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    stage = copy / "ingest"
    # as if killed while writing: the manifest and the last shard never appeared
    (stage / "manifest.json").unlink()
    last = manifest["shards"][-1]
    (stage / last).unlink()
    (stage / last.replace(".tar", ".parquet")).unlink()
    first = stage / manifest["shards"][0]
    os.utime(first, ns=(1, 1))
    resumed = run_ingest(config_for(world_dir), copy, log=lambda *_: None)
    assert first.stat().st_mtime_ns == 1  # finished shards are never rewritten
    same = lambda d: read_pairs_index(d).drop_columns(["shard"]).to_pylist()  # noqa: E731
    assert same(stage) == same(out / "ingest")
    assert resumed["dropped"] == manifest["dropped"] and resumed["rows_out"] == manifest["rows_out"]


def test_a_bad_config_is_refused_before_any_work(small_world, tmp_path):
    world_dir, _ = small_world
    with pytest.raises(ConfigError, match="ingest.resize_mode: 'stretch'"):
        run_ingest(config_for(world_dir, resize_mode="stretch"), tmp_path)
    with pytest.raises(ConfigError, match="ingest: unknown key"):
        run_ingest(config_for(world_dir, imagesize=10), tmp_path)
    with pytest.raises(ConfigError, match="ingest.filters.near_duplicate_radius: -1"):
        run_ingest(config_for(world_dir, filters={"near_duplicate_radius": -1}), tmp_path)
    with pytest.raises(ConfigError, match=r"ingest.filters: unknown key\(s\) \['min_sid'\]"):
        run_ingest(config_for(world_dir, filters={"min_sid": 10}), tmp_path)
    with pytest.raises(ConfigError, match=r"ingest.languages: \['xx'\] not among"):
        run_ingest(config_for(world_dir, languages={"en": 0.5, "xx": 0.5}), tmp_path)
    assert not (tmp_path / "ingest").exists()


@pytest.mark.parametrize("key, value, expected", [
    ("samples_per_shard", 0, "from 1 to"), ("download_shard_size", -5, "from 1 to"), ("retries", -3, "from 0 to"),
    ("threads", 0, "from 1 to"), ("image_size", 0, "from 1 to"), ("encode_quality", 500, "from 1 to 100"),
    ("max_bytes", -1, "from 1 to"), ("timeout", -1, "above 0"), ("max_seconds", 0, "above 0"),
    ("max_shard_attempts", 0, ">= 1"), ("partitions", 0, "null"), ("robots_directives", "noai", "a list"),
    ("filters", {"near_duplicate_search": "fuzzy"}, "auto, exact, lsh"),
    ("filters", {"near_duplicate_recall": 1.5}, "above 0 and below 1"),
])
def test_sizes_counts_and_seconds_out_of_range_are_refused_with_the_key(small_world, tmp_path, key, value, expected):
    world_dir, _ = small_world
    with pytest.raises(ConfigError, match=f"ingest.{key}.*{expected}" if key != "filters" else expected):
        run_ingest(config_for(world_dir, **{key: value}), tmp_path)
    assert not (tmp_path / "ingest").exists()


def test_an_unreadable_url_list_is_named_with_the_reason(tmp_path):
    (tmp_path / "urls.jsonl").write_text("not json at all\n")
    config = {"ingest": {"sources": [{"path": str(tmp_path / "urls.jsonl"), "format": "jsonl"}]}}
    with pytest.raises(ConfigError, match=r"ingest.sources: source .*urls.jsonl: not readable as jsonl"):
        run_ingest(config, tmp_path / "run", log=lambda *_: None)


def test_the_distributed_decisions_equal_the_global_algorithm_row_for_row(ingested):
    from decision_oracle import distributed_decisions, oracle_decisions

    _, _, out, manifest = ingested
    oracle = oracle_decisions(out / "ingest", {"en": 0.773, "zh": 0.227}, seed=0)
    assert distributed_decisions(out / "ingest") == oracle
    assert sum(r is not None and r.startswith("duplicate_of") for r in oracle.values()) > 0
    assert manifest["dedup"]["method"] == "bands" and manifest["dedup"]["recall"] == 1.0


def test_every_shard_writes_its_kept_and_dropped_rows_and_they_add_up(ingested):
    _, _, out, manifest = ingested
    stage = out / "ingest"
    inputs = sorted((stage / "_work" / "input").glob("s*.parquet"))
    parts = sorted((stage / "dropped").glob("part-*.parquet"))
    assert len(parts) == len(inputs)  # one dropped part per download shard, even where nothing was dropped
    for shard, part in enumerate(parts):
        rows_in = pq.read_metadata(inputs[shard]).num_rows
        kept = pq.read_metadata(stage / "_work" / "kept" / part.name.removeprefix("part-")).num_rows
        assert kept + pq.read_metadata(part).num_rows == rows_in
    assert manifest["rows_in"] == manifest["rows_out"] + sum(manifest["dropped"].values())


def test_the_dropped_rows_read_as_one_table_in_pyarrow_polars_datasets_and_ray_data(ingested):
    import datasets
    import polars as pl
    import pyarrow.dataset as ds
    import ray

    _, _, out, manifest = ingested
    folder = out / "ingest" / "dropped"
    expected = sum(manifest["dropped"].values())
    assert ds.dataset(folder).count_rows() == expected
    assert pl.scan_parquet(folder / "*.parquet").select(pl.len()).collect().item() == expected
    assert datasets.load_dataset("parquet", data_dir=str(folder), split="train").num_rows == expected
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        assert ray.data.read_parquet(str(folder)).count() == expected
    finally:
        ray.shutdown()
