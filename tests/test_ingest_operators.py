"""The ingest operators on their own: URL checks, filters, dedup, language mix."""
from __future__ import annotations

import hashlib
import io
import random

import polars as pl
import pyarrow as pa
import pytest
from PIL import Image

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


def test_the_hash_drops_an_image_that_does_not_decode_and_names_the_reason():
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), "red").save(buffer, "JPEG")
    good = buffer.getvalue()
    b = pa.table({"jpg": [good, good[:20], b"GIF89a not really", None],
                  "drop_reason": pa.array([None, None, None, "http_404"], pa.string())})
    out = filters.perceptual_hash(b)
    assert out["drop_reason"].to_pylist() == [None, "decode_error", "decode_error", "http_404"]
    assert len(out["phash"][0].as_py()) == 64 and out["phash"].to_pylist()[1:] == [None, None, None]


def test_a_filter_never_overwrites_an_earlier_reason():
    b = pa.table({"original_width": [10], "original_height": [10], "drop_reason": ["http_404"]})
    assert filters.image_geometry(b, CONFIG)["drop_reason"].to_pylist() == ["http_404"]


def test_language_id_keeps_the_mix_languages_and_drops_others():
    lang_id = filters.LanguageId(CONFIG)
    b = batch(caption=["Two red circles and a blue square on a white background.",
                       "白色背景上有两个红色圆形和一个蓝色正方形。",
                       "Auf diesem Bild sind drei geometrische Formen auf einem hellen Hintergrund zu sehen.",
                       "A blue hexagon to the left of a blue hexagon.",
                       "白色背景上有三个红色圆形。",
                       "猫が二匹ソファの上で寝ています。"])
    out = lang_id(b)
    assert out["lang"].to_pylist()[:3] == ["en", "zh", "de"]
    # ambiguous short English (lid.176's top guess is Esperanto at low confidence) stays English
    assert out["lang"].to_pylist()[3] == "en"
    # Han text without kana is Chinese, though lid.176 alone says Japanese; kana make it Japanese
    assert out["lang"].to_pylist()[4:] == ["zh", "ja"]
    assert out["drop_reason"].to_pylist() == [None, None, "language", None, None, "language"]


def test_screening_refuses_rows_before_download_with_their_reasons():
    rows = pa.table({
        "url": ["http://example.com/a.jpg", "not a url", "http://127.0.0.1/b.jpg", "http://example.com/c.jpg",
                "http://example.com/d.jpg", "http://example.com/e.jpg", "http://example.com/f.jpg"],
        "caption": ["Two red circles on a white background.", "A red circle on white.", "A red circle on white.",
                    None, "Auf diesem Bild sind drei Formen auf einem hellen Hintergrund zu sehen.",
                    "red red red red red", "两个红色圆形。"],
    })
    rows = rows.append_column("problem", pa.array([None] * 6 + ["caption_not_text"], pa.string()))
    out = filters.screen_rows(rows, FetchPolicy(), CONFIG)
    assert out["drop_reason"].to_pylist() == [None, "malformed_url", "private_network", "caption_missing",
                                              "language", "caption_junk", "caption_not_text"]


def test_a_json_lines_list_with_captions_of_other_types_is_read_and_marked(tmp_path):
    from pipelines.ingest.sources import Source, read_source

    path = tmp_path / "mixed.jsonl"
    path.write_text('{"url": "http://a/1.jpg", "caption": "A red circle."}\n{"url": "http://a/2.jpg", "caption": 1984}\n'
                    '{"url": "http://a/3.jpg", "caption": null}\n{"url": ["x"], "caption": "A square."}\n')
    table = read_source(Source.from_config({"path": str(path), "format": "jsonl"})[0])
    assert table["caption"].to_pylist() == ["A red circle.", None, None, "A square."]
    assert table["problem"].to_pylist() == [None, "caption_not_text", None, "url_not_text"]


def samples(keys, sha, phash, lang=None, reasons=None):
    n = len(keys)
    return pl.DataFrame({"key": keys, "sha256": sha, "phash": phash, "lang": lang or ["en"] * n,
                         "drop_reason": reasons or [None] * n}, schema_overrides={"drop_reason": pl.String})


def phash_hex(bits: int) -> str:
    """A 256-bit hash as filters.phash256 writes it."""
    return f"{bits:064x}"


def flip(bits: int, positions) -> int:
    """The hash with the given bit positions inverted: a near copy exactly len(positions) bits away."""
    for p in positions:
        bits ^= 1 << p
    return bits


def random_hashes(count: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.getrandbits(256) for _ in range(count)]


def reasons(df: pl.DataFrame, **kwargs) -> dict:
    return dict(mark_duplicates(df, **kwargs).select("key", "drop_reason").iter_rows())


def test_dedup_keeps_the_first_copy_and_names_it():
    p1, p2, p3 = (phash_hex(h) for h in random_hashes(3, seed=1))
    df = samples(["003", "001", "002", "004"], ["a", "a", "b", "c"], [p1, p2, p3, p3])
    assert reasons(df) == {"001": None, "002": None, "003": "duplicate_of 001", "004": "duplicate_of 002"}


def test_dedup_ignores_samples_already_dropped():
    (h,) = random_hashes(1, seed=2)
    df = samples(["001", "002", "003"], ["a", "a", "b"], [phash_hex(h), phash_hex(h), phash_hex(flip(h, range(4)))],
                 reasons=["too_small", None, None])
    # the dropped 001 neither keeps its exact copy 002 out nor its near copy 003
    assert reasons(df) == {"001": "too_small", "002": None, "003": "duplicate_of 002"}


def test_near_copies_within_the_radius_name_the_earliest_key():
    (h,) = random_hashes(1, seed=3)
    df = samples(["003", "001", "002"], ["a", "b", "c"],
                 [phash_hex(flip(h, range(3))), phash_hex(h), phash_hex(flip(h, range(100, 116)))])
    assert reasons(df, radius=16) == {"001": None, "002": "duplicate_of 001", "003": "duplicate_of 001"}


def test_the_radius_counts_bits_inclusively():
    (h,) = random_hashes(1, seed=4)
    df = samples(["001", "002"], ["a", "b"], [phash_hex(h), phash_hex(flip(h, range(0, 256, 16)))])  # 16 bits apart
    assert reasons(df, radius=16)["002"] == "duplicate_of 001"
    assert reasons(df, radius=15)["002"] is None


def test_a_marked_sample_keeps_no_one_out_so_chains_stop():
    (h,) = random_hashes(1, seed=5)
    # A ~ B (10 bits), B ~ C (10 bits), A !~ C (20 bits): B goes to A, and C, whose only near
    # neighbour B is gone, stays
    df = samples(["001", "002", "003"], ["a", "b", "c"],
                 [phash_hex(h), phash_hex(flip(h, range(10))), phash_hex(flip(h, range(20)))])
    assert reasons(df, radius=16) == {"001": None, "002": "duplicate_of 001", "003": None}


def test_distinct_images_are_all_kept():
    hashes = random_hashes(2000, seed=6)
    df = samples([f"{i:05d}" for i in range(2000)], [str(i) for i in range(2000)], [phash_hex(h) for h in hashes])
    assert mark_duplicates(df)["drop_reason"].null_count() == 2000


def test_a_re_encoded_resized_shapes_scene_is_marked_and_another_scene_is_not():
    from pipelines.ingest.filters import phash256
    from pipelines.shapes_world.draw import draw_scene, encode_jpeg
    from pipelines.shapes_world.scenes import make_scene

    def downloaded(image: Image.Image, quality: int) -> bytes:
        """Served at `quality`, then as img2dataset hands it to the hash: shorter side 128 px, JPEG q90."""
        served = Image.open(io.BytesIO(encode_jpeg(image, quality)))
        scale = 128 / min(served.size)
        return encode_jpeg(served.resize((round(served.width * scale), round(served.height * scale)),
                                         Image.Resampling.BOX), quality=90)

    scene, other = (make_scene(random.Random(f"dedup/{name}"), width=240, height=200, shape_count=3)
                    for name in ("scene", "other"))
    original = draw_scene(scene)
    copy = original.resize((216, 180), Image.Resampling.LANCZOS)  # 90%, saved at a lower quality
    images = {"001": downloaded(original, 90), "002": downloaded(copy, 75), "003": downloaded(draw_scene(other), 90)}
    assert images["001"] != images["002"]
    df = samples(list(images), [hashlib.sha256(data).hexdigest() for data in images.values()],
                 [phash256(data) for data in images.values()])
    assert reasons(df) == {"001": None, "002": "duplicate_of 001", "003": None}


def test_fifty_thousand_hashes_find_exactly_the_planted_near_copies():
    hashes = random_hashes(50_000, seed=7)
    rng = random.Random(8)
    planted = {f"p{k}": (i, flip(hashes[i], rng.sample(range(256), 1 + 3 * k)))
               for k, i in enumerate(rng.sample(range(len(hashes)), 5))}
    keys = [f"{i:06d}" for i in range(len(hashes))] + list(planted)
    df = samples(keys, keys, [phash_hex(h) for h in hashes] + [phash_hex(h) for _, h in planted.values()])
    counters = {}
    out = dict(mark_duplicates(df, radius=16, counters=counters).select("key", "drop_reason").drop_nulls().iter_rows())
    assert out == {key: f"duplicate_of {i:06d}" for key, (i, _) in planted.items()}
    # banding checks a sliver of the 1.25e9 pairs: that is what keeps a whole run affordable
    assert counters["method"] == "bands" and counters["checked_pairs"] < 0.001 * len(keys) ** 2 / 2


def test_hashes_held_as_bytes_decide_as_their_hex_does():
    """The ingest driver holds sha256 and phash as 32 bytes each, not 64 hex digits: same decisions."""
    hashes = random_hashes(3000, seed=10)
    hashes += [flip(h, range(0, 200, 20)) for h in hashes[:50]]  # 50 near copies, 10 bits away
    keys = [f"{i:05d}" for i in range(len(hashes))]
    sha = [f"{i - 2950 if 2950 <= i < 3000 else i:064x}" for i in range(len(hashes))]  # 2950-2999 copy 0-49
    as_hex = samples(keys, sha, [phash_hex(h) for h in hashes])
    as_bytes = as_hex.with_columns(pl.col("sha256").str.decode("hex"), pl.col("phash").str.decode("hex"))
    decided = reasons(as_bytes)
    assert decided == reasons(as_hex)
    assert sum(r is not None for r in decided.values()) == 100  # 50 exact copies (sha256) + 50 near ones


def test_identical_hashes_are_searched_once():
    (h,) = random_hashes(1, seed=9)
    keys = [f"{i:05d}" for i in range(5000)]
    counters = {}
    out = mark_duplicates(samples(keys, keys, [phash_hex(h)] * 5000), counters=counters)
    assert out["drop_reason"].to_list() == [None] + ["duplicate_of 00000"] * 4999
    assert counters["hashes"] == 1


def test_hashes_sharing_most_bands_fall_back_to_checking_all_pairs():
    # mostly-background images agree on most bits, so nearly every pair shares a band
    common = random_hashes(1, seed=10)[0] >> 48 << 48
    hashes = [common | h >> 208 for h in random_hashes(1500, seed=11)]
    keys = [f"{i:05d}" for i in range(len(hashes))]
    counters = {}
    out = mark_duplicates(samples(keys, keys, [phash_hex(h) for h in hashes]), radius=16, counters=counters)
    assert counters["method"] == "all_pairs"
    kept: list[int] = []
    expected = {}
    for i, h in enumerate(hashes):  # the key-order walk, spelled out
        first = next((k for k in kept if (hashes[k] ^ h).bit_count() <= 16), None)
        expected[keys[i]] = None if first is None else f"duplicate_of {keys[first]}"
        if first is None:
            kept.append(i)
    assert dict(out.select("key", "drop_reason").iter_rows()) == expected


def test_the_banded_search_in_small_slices_finds_every_pair_brute_force_finds(monkeypatch):
    """Slices of 50 candidate pairs, so buckets are grouped across slices and a bucket of 190 pairs
    (20 hashes agreeing on their first 64 bits) is searched blockwise on its own: same pairs."""
    import numpy as np

    from pipelines.ingest import dedup

    rng = random.Random(12)
    hashes = random_hashes(600, seed=13)
    hashes += [flip(hashes[i], rng.sample(range(256), rng.randint(1, 16))) for i in range(0, 600, 7)]
    hashes += [(hashes[0] >> 192 << 192) | rng.getrandbits(192) for _ in range(19)]  # one band value, 20 hashes
    words = dedup.hash_words(pl.Series([phash_hex(h) for h in hashes]), pl.Series([str(i) for i in range(len(hashes))]))
    brute = {(i, j) for i in range(len(hashes)) for j in range(i + 1, len(hashes))
             if (hashes[i] ^ hashes[j]).bit_count() <= 16}
    monkeypatch.setattr(dedup, "VERIFY_PAIRS_PER_SLICE", 50)
    counters = {}
    found = dedup.near_pairs(words, 16, counters=counters)
    assert counters["method"] == "bands" and counters["biggest_bucket"] >= 20
    assert {tuple(p) for p in found.tolist()} == brute and len(brute) >= 86
    assert found.dtype == np.uint32


def test_a_search_over_the_candidate_limit_is_refused_with_the_figures():
    keys = [f"{i:04d}" for i in range(500)]
    df = samples(keys, keys, [phash_hex(h) for h in random_hashes(500, seed=12)])
    with pytest.raises(ValueError, match="ingest.filters.near_duplicate_radius"):
        mark_duplicates(df, radius=60, max_candidate_pairs=1000)


def test_a_phash_that_is_not_256_bits_of_hex_names_the_sample():
    df = samples(["001", "002"], ["a", "b"], [phash_hex(1), "p1"])
    with pytest.raises(ValueError, match="sample 002: phash 'p1'"):
        mark_duplicates(df)


@pytest.mark.parametrize("radius", [-1, 128, 2.5])
def test_a_bad_radius_is_refused_with_the_key(radius):
    with pytest.raises(ValueError, match="ingest.filters.near_duplicate_radius"):
        mark_duplicates(samples(["001"], ["a"], [phash_hex(1)]), radius=radius)


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
