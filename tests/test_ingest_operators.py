"""The ingest operators on their own: URL checks, filters, dedup, language mix."""
from __future__ import annotations

import polars as pl
import pyarrow as pa
import pytest

from pipelines.ingest import filters
from pipelines.ingest.dedup import mark_duplicates
from pipelines.ingest.mix import apply_mix, normalise_ratios, plan_mix
from pipelines.ingest.outcomes import download_drop_reason
from pipelines.ingest.fetch_guard import FetchPolicy
from pipelines.ingest.sources import caption_problem, url_problem

CONFIG = filters.FilterConfig()


def batch(**columns) -> pa.Table:
    n = len(next(iter(columns.values())))
    return pa.table({**columns, "drop_reason": pa.array([None] * n, pa.string())})


@pytest.mark.parametrize("url, allowed, reason", [
    ("http://example.com/a.jpg", False, None),
    ("ftp://example.com/a.jpg", False, "malformed_url"),
    ("not a url", False, "malformed_url"),
    ("http://[::1", False, "malformed_url"),
    (None, False, "malformed_url"),
    ("http://127.0.0.1:8000/a.jpg", False, "private_network"),
    ("http://10.1.2.3/a.jpg", False, "private_network"),
    ("http://localhost/a.jpg", False, "private_network"),
    ("http://127.0.0.1:8000/a.jpg", True, None),
    ("http://[::1]:8000/a.jpg", False, "private_network"),
    ("http://169.254.169.254/latest/meta-data", False, "private_network"),
])
def test_url_problem_names_unfetchable_urls(url, allowed, reason):
    assert url_problem(url, FetchPolicy(allow_private_network=allowed)) == reason


def test_allowed_networks_open_only_the_named_private_range():
    policy = FetchPolicy(allowed_networks=("10.1.0.0/16",))
    assert url_problem("http://10.1.2.3/a.jpg", policy) is None
    assert url_problem("http://10.2.0.1/a.jpg", policy) == "private_network"


def test_caption_problem_separates_missing_from_empty():
    assert caption_problem(None) == "caption_missing"
    assert caption_problem("   ") == "caption_empty"
    assert caption_problem("a red circle") is None


@pytest.mark.parametrize("status, message, reason", [
    ("failed_to_download", "HTTP Error 404: File not found", "http_404"),
    ("failed_to_download", "<urlopen error timed out>", "timeout"),
    ("failed_to_resize", "Image decoding error", "not_image"),
    ("failed_to_download", "<urlopen error [Errno 111] Connection refused>", "unreachable"),
    ("failed_to_resize", "something else", "decode_error"),
])
def test_download_outcomes_map_to_reasons(status, message, reason):
    assert download_drop_reason(status, message) == reason


def test_geometry_filter_drops_small_and_elongated_images_only():
    b = batch(original_width=[200, 20, 600, 100], original_height=[150, 300, 40, 100])
    out = filters.image_geometry(b, CONFIG)
    assert out["drop_reason"].to_pylist() == [None, "too_small", "aspect", None]


def test_caption_filter_counts_words_for_english_and_characters_for_chinese():
    b = batch(caption=["Two red circles on white.", "red", "两个红色圆形。", "圆",
                       "visit http://spam.example now", "red red red red red", "<b>A</b> square"],
              lang=["en", "en", "zh", "zh", "en", "en", "en"])
    out = filters.caption_quality(b, CONFIG)
    assert out["drop_reason"].to_pylist() == [None, "caption_length", None, "caption_length",
                                              "caption_junk", "caption_junk", "caption_junk"]


def test_a_filter_never_overwrites_an_earlier_reason():
    b = pa.table({"original_width": [10], "original_height": [10], "drop_reason": ["http_404"]})
    assert filters.image_geometry(b, CONFIG)["drop_reason"].to_pylist() == ["http_404"]


def test_language_id_keeps_the_mix_languages_and_drops_others():
    lang_id = filters.LanguageId(CONFIG)
    b = batch(caption=["Two red circles and a blue square on a white background.",
                       "白色背景上有两个红色圆形和一个蓝色正方形。",
                       "Auf diesem Bild sind drei geometrische Formen auf einem hellen Hintergrund zu sehen.",
                       "An image of one shape on beige: a blue hexagon."])
    out = lang_id(b)
    assert out["lang"].to_pylist()[:3] == ["en", "zh", "de"]
    # ambiguous short English (lingua's top guess is French at low confidence) stays English
    assert out["lang"].to_pylist()[3] == "en"
    assert out["drop_reason"].to_pylist() == [None, None, "language", None]


def samples(keys, sha, phash, lang=None, reasons=None):
    n = len(keys)
    return pl.DataFrame({"key": keys, "sha256": sha, "phash": phash, "lang": lang or ["en"] * n,
                         "drop_reason": reasons or [None] * n}, schema_overrides={"drop_reason": pl.String})


def test_dedup_keeps_the_first_copy_and_names_it():
    df = samples(["003", "001", "002", "004"], ["a", "a", "b", "c"], ["p1", "p2", "p3", "p3"])
    out = dict(mark_duplicates(df).select("key", "drop_reason").iter_rows())
    assert out == {"001": None, "002": None, "003": "duplicate_of 001", "004": "duplicate_of 002"}


def test_dedup_ignores_samples_already_dropped():
    df = samples(["001", "002"], ["a", "a"], ["p", "p"], reasons=["too_small", None])
    out = dict(mark_duplicates(df).select("key", "drop_reason").iter_rows())
    assert out == {"001": "too_small", "002": None}


def test_plan_mix_meets_the_ratio_with_the_most_samples():
    ratios = normalise_ratios({"en": 0.773, "zh": 0.227})
    plan = plan_mix({"en": 390, "zh": 210}, ratios)
    assert plan["en"] == 390 and abs(plan["en"] / sum(plan.values()) - 0.773) < 0.005
    plan = plan_mix({"en": 1000, "zh": 100}, ratios)
    assert plan["zh"] == 100 and abs(plan["en"] / sum(plan.values()) - 0.773) < 0.005


def test_apply_mix_is_deterministic_by_seed_and_marks_the_rest():
    keys = [f"{i:04d}" for i in range(400)]
    langs = ["en"] * 200 + ["zh"] * 200
    df = samples(keys, keys, keys, lang=langs)
    ratios = normalise_ratios({"en": 0.773, "zh": 0.227})
    first, report = apply_mix(df, ratios, seed=0)
    again, _ = apply_mix(df, ratios, seed=0)
    other, _ = apply_mix(df, ratios, seed=1)
    assert first.equals(again) and not first.equals(other)
    kept = first.filter(pl.col("drop_reason").is_null())
    assert abs(report["kept_share"]["en"] - 0.773) < 0.005
    assert kept.height == sum(report["kept"].values())
    assert set(first["drop_reason"].drop_nulls()) == {"mix_downsampled"}


def test_bad_language_ratios_are_refused_with_the_key():
    with pytest.raises(ValueError, match="ingest.languages"):
        normalise_ratios({"en": -1})
