"""Caption-pair source cards, `loom catalog list --kind/--lang`, and ingest sources named by card."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from catalog.cards import METADATA_FORMATS, REQUIRED_FIELDS, get_card, load_cards, pairs_layout, select_cards
from jobs.cli import main as loom
from jobs.config import ConfigError
from jobs.ingest import ingest_settings
from pipelines.ingest.sources import FORMATS, Source, read_source

PAIRS_CARDS = {"laion400m", "laion2b_en", "coyo700m", "cc3m", "cc12m", "sbu_captions",
               "laion2b_multi_zh", "wukong100m", "zero_corpus"}
CHINESE = {"laion2b_multi_zh", "wukong100m", "zero_corpus"}


def ingest(*sources) -> dict:
    return ingest_settings({"ingest": {"sources": list(sources)}})


# ---------------------------------------------------------------- the cards


def test_every_caption_pair_source_has_a_pairs_card():
    assert set(select_cards(load_cards(), kind="pairs")) == PAIRS_CARDS


@pytest.mark.parametrize("name", sorted(PAIRS_CARDS))
def test_a_pairs_card_has_what_an_ingest_source_and_a_reader_need(name):
    card = get_card(name)
    assert all(card[field] for field in REQUIRED_FIELDS["pairs"])
    assert card["size"]["pairs"] >= 1_000_000
    layout = pairs_layout(card)
    assert layout["format"] in FORMATS
    assert layout["where"].startswith("http")
    assert all(isinstance(layout[col], str) and layout[col] for col in ("url_col", "caption_col"))
    assert all(source["read_at"] and source["fact"] for source in card["sources"])
    assert isinstance(card.get("unverified", []), list)


@pytest.mark.parametrize("name, layout, fmt, url_col, caption_col", [
    ("laion400m", "official", "parquet", "URL", "TEXT"),
    ("laion2b_en", "laion5b", "parquet", "URL", "TEXT"),
    ("laion2b_multi_zh", "idea_ccnl", "parquet", "URL", "TEXT"),
    ("coyo700m", "hub", "parquet", "url", "text"),
    ("cc3m", "official", "tsv", "url", "caption"),
    ("cc3m", "hub", "parquet", "image_url", "caption"),
    ("cc12m", "official", "tsv", "url", "caption"),
    ("cc12m", "hub", "parquet", "image_url", "caption"),
    ("sbu_captions", "official", "json", "image_urls", "captions"),
    ("wukong100m", "official", "csv", "url", "caption"),
    ("wukong100m", "hub", "parquet", "url", "caption"),
    ("zero_corpus", "official", "jsonl", "ImageUrl", "Title"),
])
def test_cards_carry_the_published_format_and_column_names(name, layout, fmt, url_col, caption_col):
    files = pairs_layout(get_card(name), layout)
    assert (files["format"], files["url_col"], files["caption_col"]) == (fmt, url_col, caption_col)


def test_the_conceptual_captions_tsvs_are_headerless_in_opposite_column_orders():
    cc3m, cc12m = pairs_layout(get_card("cc3m")), pairs_layout(get_card("cc12m"))
    assert cc3m["header"] is False and cc3m["columns"] == ["caption", "url"]
    assert cc12m["header"] is False and cc12m["columns"] == ["url", "caption"]


def test_the_formats_a_card_may_name_are_the_formats_a_source_reads():
    assert METADATA_FORMATS == FORMATS


def test_a_card_without_kind_is_a_dataset_card():
    datasets = select_cards(load_cards(), kind="dataset")
    assert {"coco_caption", "vqav2"} <= set(datasets)
    assert not set(datasets) & PAIRS_CARDS


# ---------------------------------------------------------------- loom catalog


def listed(capsys, *flags) -> dict[str, str]:
    assert loom(["catalog", "list", *flags]) == 0
    lines = capsys.readouterr().out.splitlines()
    return {line.split()[0]: line for line in lines}


def test_catalog_list_kind_pairs_lists_only_the_pair_sources(capsys):
    assert set(listed(capsys, "--kind", "pairs")) == PAIRS_CARDS


def test_catalog_list_lang_zh_lists_the_chinese_sources(capsys):
    assert set(listed(capsys, "--lang", "zh")) == CHINESE
    assert set(listed(capsys, "--kind", "pairs", "--lang", "zh")) == CHINESE


def test_catalog_list_keeps_the_dataset_card_line_format(capsys):
    lines = listed(capsys, "--kind", "dataset")
    width = max(len(name) for name in lines)  # the name column fits the longest name
    assert lines["vqav2"] == f"{'vqav2':{width}} {'vqa':24} {'held-in':9} VQAv2"


def test_catalog_list_gives_a_pairs_card_its_language_and_size(capsys):
    line = listed(capsys, "--kind", "pairs")["cc3m"]
    assert line == f"{'cc3m':16} {'pairs, en':24} {'3.3M':9} Conceptual Captions (CC3M)"


def test_catalog_show_prints_the_card(capsys):
    assert loom(["catalog", "show", "wukong100m"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == get_card("wukong100m")


# ---------------------------------------------------------------- sources by card


def write_rows(path, fmt: str, rows: list[dict], columns: list[str] | None = None) -> None:
    """Write rows the way the format is published: headerless when `columns` is given."""
    names = columns or list(rows[0])
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif fmt in ("tsv", "csv"):
        sep = "\t" if fmt == "tsv" else ","
        quote = (lambda v: v) if fmt == "tsv" else (lambda v: '"' + v.replace('"', '""') + '"')
        header = [] if columns else [sep.join(names)]
        path.write_text("\n".join(header + [sep.join(quote(str(r[n])) for n in names) for r in rows]) + "\n")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    elif fmt == "json":  # one mapping of column lists, as SBU Captions ships
        path.write_text(json.dumps({n: [r[n] for r in rows] for n in names}, ensure_ascii=False))


@pytest.mark.parametrize("name", sorted(PAIRS_CARDS))
def test_each_card_reads_a_file_laid_out_as_it_is_published(name, tmp_path):
    layout = pairs_layout(get_card(name))
    rows = [{layout["url_col"]: f"https://example.com/{i}.jpg", layout["caption_col"]: f"caption {i}",
             "extra": "x"} for i in range(3)]
    headerless = layout["columns"] if layout.get("header", True) is False else None
    if headerless:
        rows = [{col: row.get(col, "") for col in headerless} for row in rows]
    path = tmp_path / f"part.{layout['format']}"
    write_rows(path, layout["format"], rows, headerless)

    [source] = Source.from_config({"card": name, "path": str(path)})
    table = read_source(source).to_pylist()
    assert [r["url"] for r in table] == [f"https://example.com/{i}.jpg" for i in range(3)]
    assert [r["caption"] for r in table] == [f"caption {i}" for i in range(3)]
    assert [r["row_id"] for r in table] == [f"{name}:0:{i}" for i in range(3)]


def test_a_headerless_cc3m_tsv_reads_caption_then_url(tmp_path):
    path = tmp_path / "Train_GCC-training.tsv"
    path.write_text("a dog runs on the grass\thttp://a.example/1.jpg\n"
                    "1984\thttp://a.example/2.jpg\n"
                    'actor says "hello\thttp://a.example/3.jpg\n')
    [source] = Source.from_config({"card": "cc3m", "path": str(path)})
    rows = read_source(source).to_pylist()
    assert rows == [
        {"row_id": "cc3m:0:0", "source": "cc3m", "url": "http://a.example/1.jpg", "caption": "a dog runs on the grass",
         "problem": None},
        {"row_id": "cc3m:0:1", "source": "cc3m", "url": "http://a.example/2.jpg", "caption": "1984", "problem": None},
        {"row_id": "cc3m:0:2", "source": "cc3m", "url": "http://a.example/3.jpg", "caption": 'actor says "hello',
         "problem": None},
    ]


def test_a_parquet_glob_is_one_source_per_file_with_row_ids_unique_across_files(tmp_path):
    for part, urls in enumerate([["http://l.example/a.jpg", "http://l.example/b.jpg"], ["http://l.example/c.jpg"]]):
        pq.write_table(pa.table({"SAMPLE_ID": list(range(len(urls))), "URL": urls,
                                 "TEXT": [u[-5] + " text" for u in urls], "similarity": [0.31] * len(urls)}),
                       tmp_path / f"part-{part:05d}.snappy.parquet")
    sources = Source.from_config({"card": "laion400m", "path": str(tmp_path / "*.parquet")})
    assert [(s.label, s.part, s.url_col, s.caption_col) for s in sources] == [
        ("laion400m", 0, "URL", "TEXT"), ("laion400m", 1, "URL", "TEXT")]
    rows = pa.concat_tables([read_source(s) for s in sources]).to_pylist()
    assert [(r["row_id"], r["url"], r["caption"]) for r in rows] == [
        ("laion400m:0:0", "http://l.example/a.jpg", "a text"),
        ("laion400m:0:1", "http://l.example/b.jpg", "b text"),
        ("laion400m:1:0", "http://l.example/c.jpg", "c text"),
    ]


def test_a_layout_picks_the_hub_copy_and_config_keys_override_the_card(tmp_path):
    path = tmp_path / "train-00000-of-00002.parquet"
    pq.write_table(pa.table({"image_url": ["http://h.example/1.jpg"], "caption": ["a cat"], "alt": ["b cat"]}), path)
    [hub] = Source.from_config({"card": "cc3m", "layout": "hub", "path": str(path)})
    assert (hub.format, hub.url_col, hub.caption_col, hub.columns) == ("parquet", "image_url", "caption", None)
    [renamed] = Source.from_config({"card": "cc3m", "layout": "hub", "path": str(path),
                                    "caption_col": "alt", "name": "cc3m_alt"})
    assert read_source(renamed).to_pylist()[0] == {
        "row_id": "cc3m_alt:0:0", "source": "cc3m_alt", "url": "http://h.example/1.jpg", "caption": "b cat",
        "problem": None}


def test_a_path_source_is_read_exactly_as_before(tmp_path):
    path = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"u": ["http://p.example/1.jpg"], "c": ["a red circle"]}), path)
    entry = {"path": str(path), "url_col": "u", "caption_col": "c"}
    assert Source.from_config(entry) == [Source(path=str(path), url_col="u", caption_col="c")]
    assert read_source(Source(**entry)).to_pylist() == [
        {"row_id": "urls:0", "source": "urls", "url": "http://p.example/1.jpg", "caption": "a red circle",
         "problem": None}]


def test_ingest_accepts_card_and_path_sources_together(tmp_path):
    (tmp_path / "cc3m.tsv").write_text("a caption\thttp://a.example/1.jpg\n")
    cfg = ingest({"card": "cc3m", "path": str(tmp_path / "*.tsv")},
                 {"path": str(tmp_path / "urls.parquet"), "url_col": "url", "caption_col": "caption"})
    assert cfg["sources"][0] == {"card": "cc3m", "path": str(tmp_path / "*.tsv")}


# ---------------------------------------------------------------- refused configs


@pytest.mark.parametrize("entry, message", [
    ({"card": "cc4m", "path": "x.tsv"},
     r"ingest.sources\[0\].card: 'cc4m' is not a card; caption-pair cards: cc12m, cc3m"),
    ({"card": "vqav2", "path": "x.json"}, r"ingest.sources\[0\].card: 'vqav2' is a dataset card, read by its adapter"),
    ({"card": "cc3m"},
     r"ingest.sources\[0\].path: card 'cc3m' says how to read its files, not where yours are; add path:"),
    ({"card": "cc3m", "path": "{tmp}/*.tsv", "layout": "mirror"},
     r"ingest.sources\[0\].layout: card 'cc3m' has no layout 'mirror'; its layouts: official, hub"),
    ({"path": "urls.xlsx", "format": "xlsx"}, r"ingest.sources\[0\].format: 'xlsx' is not one of the choices; expected one of parquet, tsv"),
    ({"card": "cc3m", "path": "x", "url": "u"}, r"ingest.sources\[0\]: unknown key\(s\) \['url'\]"),
])
def test_a_bad_card_source_is_refused_naming_the_key_and_the_fix(entry, message, tmp_path):
    (tmp_path / "a.tsv").write_text("c\thttp://a.example/1.jpg\n")
    entry = {k: v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v for k, v in entry.items()}
    with pytest.raises(ConfigError, match=message):
        ingest(entry)


def test_a_card_path_that_matches_no_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"ingest.sources\[0\].path: '.*\*\.tsv' matches no file; give an existing "
                                         r"file, or a glob such as /data/cc3m/\*\.tsv"):
        ingest({"card": "cc3m", "path": str(tmp_path / "*.tsv")})


def test_a_card_glob_over_the_demo_this_run_writes_is_checked_when_ingest_reads_it(tmp_path):
    """`loom run` checks every stage before the first: a card source globbing the demo folder that its
    demo_data stage has yet to write is not refused then; ingest reads it once the demo is there."""
    from jobs.config import load_config
    from jobs.run import check_stages

    source = {"card": "cc3m", "path": "{out}/demo/*.parquet", "format": "parquet", "url_col": "url",
              "caption_col": "caption"}
    config = {"demo_data": {"seed": 1, "pair_scenes": 6, "train_scenes": 1, "val_scenes": 1},
              "ingest": {"sources": [source], "serve": "{out}/demo", "allow_private_network": True,
                         "image_size": 64, "languages": {"en": 0.5, "zh": 0.5}}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    loaded = load_config(str(tmp_path / "run.yaml"), str(out))
    with pytest.raises(ConfigError, match=r"ingest.sources\[0\].path: '.*demo/\*\.parquet' matches no file"):
        check_stages(loaded, str(out), ["ingest"])  # without the demo stage, nothing will write them
    assert loom(["run", str(tmp_path / "run.yaml"), "--out", str(out)]) == 0
    manifest = json.loads((out / "ingest" / "manifest.json").read_text())
    assert manifest["rows_in"] >= 6 and manifest["rows_out"] >= 1


def test_two_sources_whose_row_ids_would_collide_are_refused(tmp_path):
    (tmp_path / "a.tsv").write_text("c\thttp://a.example/1.jpg\n")
    same = {"card": "cc3m", "path": str(tmp_path / "a.tsv")}
    with pytest.raises(ConfigError, match=r"ingest.sources\[1\]: its row ids \(cc3m:0:<row>\) would repeat those of "
                                         r"ingest.sources\[0\]; give one of them a distinct name:"):
        ingest(same, same)
    ingest(same, {**same, "name": "cc3m_again"})
