"""`loom pack` at cluster scale: the driver plans windows from footers and counts, the windows read their own
records, the mixture is decided per record, the tokenizer reads a bounded hash sample, and a killed pack
resumes after its finished windows."""
from __future__ import annotations

import collections
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.config import ConfigError
from jobs.pack import run_pack
from pipelines.manifest import StageRecord
from pipelines.pack_selection import (Selection, copies, count_selected, plan_windows, read_window, record_hash,
                                      selected_counts)
from pipelines.render import INSTRUCTIONS_SCHEMA
from pipelines.tokenizer_sample import SALT, file_sample, sample_fraction, sampled_conversations

from test_pack_job import instruction, packed_rows, save_tokenizer_without_pad

QUIET = dict(log=lambda *_: None)


def write_render_files(out: Path, rows: list[dict], files: int, row_group_size: int) -> Path:
    """A finished render output whose records are spread over several files of several row groups each."""
    names = []
    per_file = -(-len(rows) // files)
    for k in range(files):
        part = rows[k * per_file:(k + 1) * per_file]
        name = f"instructions/{k:02d}.parquet"
        (out / "instructions").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(part, schema=INSTRUCTIONS_SCHEMA), out / name, row_group_size=row_group_size)
        names.append(name)
    record = StageRecord("render", {"rows": len(rows), "files": files})
    record.extra["files"] = names
    record.finish(out)
    return out


def corpus(n: int, answer: str = "red blue") -> list[dict]:
    """n records: mixed datasets and splits, so each output selects some; every answer the same length."""
    rows = []
    for i in range(n):
        row = instruction(i, ["vqa", "captioning"][i % 2], answer)
        row["dataset"] = ["vqav2", "coco_caption", "gqa"][i % 3]
        row["split"] = "val" if i % 7 == 0 else "train"
        rows.append(row)
    return rows


def selected_ids(rows: list[dict]) -> list[str]:
    """What `config`'s output selects: train records of vqav2 and coco_caption."""
    return [r["id"] for r in rows if r["split"] == "train" and r["dataset"] != "gqa"]


def config(tokenizer: Path | dict, **settings):
    """A pack config with a tokenizer folder (or a {train: ...} setting) and one output of `selected_ids`."""
    tokenizer = {"path": str(tokenizer)} if isinstance(tokenizer, Path) else tokenizer
    return {"pack": {"preset": "llava-1.5-tiny", "tokenizer": tokenizer, "seq_len": 512, "ray": "never",
                     "outputs": {"instruct": {"datasets": ["vqav2", "coco_caption"], "split": "train"}}, **settings}}


@pytest.fixture()
def tokenizer(tmp_path):
    save_tokenizer_without_pad(tmp_path / "tok")
    return tmp_path / "tok"


def test_windows_read_their_own_records_spread_over_files_and_row_groups(tmp_path):
    rows = corpus(100)
    render = write_render_files(tmp_path / "render", rows, files=3, row_group_size=7)
    selection = Selection(("vqav2", "coco_caption"), "train")
    counts = [count_selected(render / f"instructions/{k:02d}.parquet", {"instruct": selection}) for k in range(3)]
    assert [len(c["rows"]) for c in counts] == [5, 5, 5]  # 34 rows a file in row groups of 7
    windows = plan_windows("instruct", selected_counts(counts, "instruct"), 10)
    read = [record["id"] for window in windows for record in read_window(window, selection)]
    expected = selected_ids(rows)
    assert read == expected  # every selected record once, in corpus order
    assert [w.records for w in windows] == [10] * (len(expected) // 10) + ([len(expected) % 10] if len(expected) % 10 else [])
    assert all(len(read_window(w, selection)) == w.records for w in windows)
    assert sum(len(w.pieces) for w in windows) < len(expected)  # the plan holds pieces of row groups, not rows


def test_windows_cut_differently_pack_the_same_samples_sequences_and_figures(tokenizer, tmp_path):
    rows = corpus(150)  # every selected sample the same length, so a window of whole sequences packs alike
    render = write_render_files(tmp_path / "render", rows, files=3, row_group_size=11)
    whole = run_pack(config(tokenizer, input=str(render)), tmp_path / "whole", **QUIET)["outputs"]["instruct"]
    assert whole["windows"] == 1
    length = whole["tokens"] // whole["samples"]
    assert length * whole["samples"] == whole["tokens"]
    per_sequence = 512 // length
    cut = run_pack(config(tokenizer, input=str(render), window=3 * per_sequence), tmp_path / "cut",
                   **QUIET)["outputs"]["instruct"]
    assert cut["windows"] > 3
    for key in ("samples", "tokens", "sequences", "fill", "lower_bound_sequences", "figures", "mixture", "images"):
        assert cut[key] == whole[key], key
    ids = lambda out: collections.Counter(i for row in packed_rows(out) for i in row["ids"])  # noqa: E731
    assert ids(tmp_path / "cut") == ids(tmp_path / "whole")


def test_the_mixture_is_decided_per_record_whatever_the_windows(tokenizer, tmp_path):
    rows = corpus(300)
    write_render_files(tmp_path / "run" / "render", rows, files=2, row_group_size=16)
    weights = {"vqav2": 1.7, "coco_caption": 0.4}
    outputs = {"instruct": {"datasets": ["vqav2", "coco_caption"], "weights": weights}}
    drawn = {}
    for window in (7, 1_000_000):
        manifest = run_pack(config(tokenizer, outputs=outputs, window=window), tmp_path / "run", **QUIET)
        drawn[window] = (collections.Counter(i for row in packed_rows(tmp_path / "run") for i in row["ids"]),
                         manifest["outputs"]["instruct"]["mixture"])
    assert drawn[7] == drawn[1_000_000]
    expected = {r["id"]: copies(weights[r["dataset"]], "instruct", r["id"]) for r in rows
                if r["split"] == "train" and r["dataset"] in weights}
    assert drawn[7][0] == collections.Counter({i: n for i, n in expected.items() if n})
    assert {n for n in expected.values()} == {0, 1, 2}  # 0.4: kept or not; 1.7: once or twice
    mixture, vqav2 = drawn[7][1], {r["id"] for r in rows if r["dataset"] == "vqav2"}
    assert mixture["vqav2"] == {"records": len(vqav2 & set(expected)),
                                "samples": sum(n for i, n in expected.items() if i in vqav2)}


def test_a_window_never_holds_more_samples_than_the_window_once_weights_repeat_records(tokenizer, tmp_path):
    write_render_files(tmp_path / "run" / "render", corpus(120), files=1, row_group_size=50)
    outputs = {"instruct": {"datasets": ["vqav2", "coco_caption"], "weights": {"vqav2": 2.5}}}
    run_pack(config(tokenizer, outputs=outputs, window=12), tmp_path / "run", **QUIET)
    for stats_file in (tmp_path / "run" / "pack" / "instruct" / "windows").glob("*.json"):
        stats = json.loads(stats_file.read_text())
        assert stats["records"] <= 12 // 3 and sum(stats["sample_lengths"]) <= 12


def test_the_driver_never_reads_the_records_and_windows_send_back_counts_not_rows(tokenizer, tmp_path, monkeypatch):
    import pipelines.pack_window
    import pipelines.render

    def refuse(*args, **kwargs):
        raise AssertionError("the pack driver read instruction records")

    for module, name in [(pipelines.render, "read_render_output"), (pipelines.render, "read_instructions"),
                         (pipelines.pack_window, "read_window")]:  # Ray workers import their own, unpatched
        monkeypatch.setattr(module, name, refuse)
    rows = corpus(90)
    write_render_files(tmp_path / "run" / "render", rows, files=3, row_group_size=8)
    returned = []
    real_add = pipelines.pack_window.OutputCounts.add
    monkeypatch.setattr(pipelines.pack_window.OutputCounts, "add", lambda self, stats: (returned.append(stats),
                                                                                          real_add(self, stats)))
    manifest = run_pack(config(tokenizer, window=20, ray="always"), tmp_path / "run", **QUIET)
    assert manifest["outputs"]["instruct"]["windows"] == len(returned) == -(-len(selected_ids(rows)) // 20) > 1
    for stats in returned:  # numbers, histograms over 0..seq_len, and counts by task, prefix and reason
        assert len(stats["sample_lengths"]) == len(stats["sequence_tokens"]) == 513
        assert set(stats["tasks"]) <= {"vqa", "captioning"} and set(stats["mixture"]) == {"vqav2", "coco_caption"}
        assert all(isinstance(stats[k], int) for k in ("records", "samples", "sequences", "images", "shards"))


def test_ray_and_this_process_and_a_second_run_write_byte_identical_shards(tmp_path):
    """Mixture draw, tokenizer sample (read by Ray tasks on Ray) and packing: the same bytes wherever they run."""
    outputs = {"instruct": {"datasets": ["vqav2", "coco_caption"], "weights": {"coco_caption": 0.5}}}
    trained = {"train": {"vocab_size": 300, "sample": 30}}  # fewer than the 80 records: a hash sample
    written = {}
    for run, mode in (("here", "never"), ("again", "never"), ("ray", "always")):
        write_render_files(tmp_path / run / "render", corpus(80), files=2, row_group_size=9)
        run_pack(config(trained, outputs=outputs, window=15, ray=mode), tmp_path / run, **QUIET)
        folder = tmp_path / run / "pack"
        written[run] = {p.relative_to(folder).as_posix(): p.read_bytes()
                        for p in sorted(folder.glob("instruct/shards/packed-*.parquet")) + [folder / "tokenizer/tokenizer.json"]}
    assert len(written["here"]) > 2 and written["here"] == written["again"] == written["ray"]


def test_a_killed_pack_resumes_after_its_finished_windows(tokenizer, tmp_path, monkeypatch):
    import jobs.pack

    write_render_files(tmp_path / "fresh" / "render", corpus(150), files=2, row_group_size=10)
    run_pack(config(tokenizer, window=20), tmp_path / "fresh", **QUIET)
    real = jobs.pack.pack_window

    def killed_in_window_3(window, settings):
        if window.index == 2:
            raise KeyboardInterrupt("killed")
        return real(window, settings)

    write_render_files(tmp_path / "run" / "render", corpus(150), files=2, row_group_size=10)
    monkeypatch.setattr(jobs.pack, "pack_window", killed_in_window_3)
    with pytest.raises(KeyboardInterrupt):
        run_pack(config(tokenizer, window=20), tmp_path / "run", **QUIET)
    shards = tmp_path / "run" / "pack" / "instruct" / "shards"
    (shards / f".packed-00002-00000.parquet.tmp-{99999}").write_bytes(b"half a shard")
    monkeypatch.setattr(jobs.pack, "pack_window", real)
    logs = []
    manifest = run_pack(config(tokenizer, window=20), tmp_path / "run", log=logs.append)
    assert [line for line in logs if "kept from the interrupted run" in line] == [
        "pack: tokenizers kept from the interrupted run",
        "pack: instruct: window 1/5 done (kept from the interrupted run)",
        "pack: instruct: window 2/5 done (kept from the interrupted run)"]
    assert [line for line in logs if line.endswith("done")] == [f"pack: instruct: window {k}/5 done" for k in (3, 4, 5)]
    fresh = tmp_path / "fresh" / "pack" / "instruct"
    assert {p.name: p.read_bytes() for p in shards.iterdir()} == \
        {p.name: p.read_bytes() for p in (fresh / "shards").iterdir()}
    assert manifest["outputs"]["instruct"] == json.loads((tmp_path / "fresh" / "pack" / "manifest.json").read_text())[
        "outputs"]["instruct"]


def test_a_selection_that_matches_no_record_is_refused_naming_the_output(tokenizer, tmp_path):
    write_render_files(tmp_path / "run" / "render", corpus(20), files=1, row_group_size=10)
    outputs = {"instruct": {"datasets": ["vqav2"]}, "ocr": {"datasets": ["textvqa"], "split": "train"}}
    with pytest.raises(ConfigError, match=r"pack.outputs.ocr: no record of split 'train' in a dataset starting with "
                                          r"\['textvqa'\]; .* holds datasets coco_caption, gqa, vqav2 in splits "
                                          r"\['train', 'val'\]"):
        run_pack(config(tokenizer, outputs=outputs), tmp_path / "run", **QUIET)
    assert not (tmp_path / "run" / "pack").exists()  # refused before any work


def test_the_tokenizer_sample_holds_at_most_sample_records_chosen_by_the_hash_of_their_ids(tmp_path):
    rows = corpus(600)
    render = write_render_files(tmp_path / "render", rows, files=3, row_group_size=64)
    files = [str(render / f"instructions/{k:02d}.parquet") for k in range(3)]
    fraction = sample_fraction(600, 100)
    chosen = list(sampled_conversations((file_sample(path, fraction) for path in files), 100))
    assert 60 <= len(chosen) <= 100
    assert chosen == list(sampled_conversations((file_sample(path, fraction) for path in files), 100))
    by_hash = [r["messages"] for r in rows if record_hash(SALT, r["id"]) < fraction][:100]
    assert chosen == by_hash
    assert sample_fraction(600, 600) == 1 and len(list(sampled_conversations(
        (file_sample(path, 1.0) for path in files), 600))) == 600


def test_a_trained_tokenizer_reads_at_most_its_sample_and_the_whole_of_a_smaller_corpus(tmp_path, monkeypatch):
    import jobs.pack
    from pipelines.tokenizer_training import train_bpe
    from templates.chat import get_chat_format

    rows = corpus(240)
    trained = []

    def counting_train_bpe(texts, *args, **kwargs):
        texts = list(texts)
        trained.append(texts)
        return train_bpe(texts, *args, **kwargs)

    monkeypatch.setattr(jobs.pack, "train_bpe", counting_train_bpe)
    chat = get_chat_format("llava_v1")
    manifests = {}
    for run, sample in (("small", 40), ("again", 40), ("whole", 1000)):
        write_render_files(tmp_path / run / "render", rows, files=2, row_group_size=32)
        manifests[run] = run_pack(config({"train": {"vocab_size": 300, "sample": sample}}), tmp_path / run, **QUIET)
    small, again, whole = trained
    assert manifests["small"]["tokenizer_sample"]["tokenizer"] <= 40
    assert len(small) - len(chat.strings()) <= 40 * 2 and small == again  # two messages a record, the same ones
    assert manifests["whole"]["tokenizer_sample"]["tokenizer"] == 240
    # a corpus within the sample trains on every message in order, as a tokenizer trained on all of it
    assert whole == list(chat.strings()) + [m["content"] for r in rows for m in r["messages"]]
    tokenizer_json = lambda run: (tmp_path / run / "pack" / "tokenizer" / "tokenizer.json").read_bytes()  # noqa: E731
    assert tokenizer_json("small") == tokenizer_json("again")


def test_a_bad_tokenizer_sample_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"pack.tokenizer.train.sample: 0 is too small; expected a whole number >= 1 \(records the "
                                         r"tokenizer trains on at most\)"):
        run_pack(config({"train": {"vocab_size": 300, "sample": 0}}), tmp_path, **QUIET)
