"""A careless config gets a one-line `loom: config error: <key>: ...` before any work, never a traceback:
duplicate keys, bytes that are not UTF-8, language shares that do not add up, paths that cannot be used."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from jobs.cli import main
from jobs.schema import SECTIONS


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def refusal(tmp_path, capsys, command: str, text: str) -> tuple[int, str]:
    """`loom COMMAND CONFIG --out RUN` on a config of `text`: its exit code and what it said on stderr."""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return run_cli(capsys, command, str(path), "--out", str(tmp_path / "run"))


def ingest_yaml(tmp_path, body: str):
    (tmp_path / "urls.parquet").write_bytes(b"")  # never read: the config is refused first
    path = tmp_path / "ingest.yaml"
    path.write_text(f"ingest:\n  sources: [{{path: '{tmp_path / 'urls.parquet'}'}}]\n{body}")
    return path


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path, capsys):
    path = ingest_yaml(tmp_path, "  seed: 1\n  image_size: 64\n  seed: 2\n")
    code, error = run_cli(capsys, "ingest", str(path), "--out", str(tmp_path / "run"))
    assert code == 2 and error.startswith(f"loom: config error: ingest.seed: given twice (lines 3 and 5 of {path}); ")
    assert not (tmp_path / "run").exists()


def test_a_key_given_twice_in_a_list_entry_is_named_with_its_place(tmp_path, capsys):
    code, error = refusal(tmp_path, capsys, "render", "render:\n  datasets:\n    - {adapter: pairs, path: a}\n"
                                                    "    - {adapter: pairs, path: b, limit: 3, limit: 4}\n")
    assert code == 2 and error.startswith("loom: config error: render.datasets[1].limit: given twice (lines 4 and 4")


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path, capsys):
    code, error = refusal(tmp_path, capsys, "render", "render: {datasets: &d [*d]}\n")
    assert code == 2 and error == "loom: config error: render.datasets[0]: holds itself (an alias inside its own " \
                                  "anchor); write the value out\n"


def test_aliases_that_expand_past_a_hundred_thousand_values_are_refused_before_they_expand(tmp_path, capsys):
    laughs = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]  # each line ten times the last: 10^9 values at a8
    laughs += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    code, error = refusal(tmp_path, capsys, "run", "\n".join(laughs) + "\n")
    assert code == 2 and error == "loom: config error: a4: expands to more than 100,000 values through YAML " \
                                  "aliases; write the config out without them\n"


def test_a_config_that_is_not_yaml_is_refused_in_one_line(tmp_path, capsys):
    code, error = refusal(tmp_path, capsys, "pack", "pack: {seq_len: 512\ntrain: {}\n")
    assert code == 2 and error.count("\n") == 1 and "config.yaml: not valid YAML (line 2, column 6):" in error


def test_a_config_that_is_not_utf8_is_refused(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("ingest:\n  sources: []\n# café\n".encode("latin-1"))
    code, error = run_cli(capsys, "ingest", str(path), "--out", str(tmp_path / "run"))
    assert code == 2 and "not UTF-8 text" in error and error.count("\n") == 1


@pytest.mark.parametrize("fmt", ["jsonl", "tsv"])
def test_a_url_list_that_is_not_utf8_is_refused_naming_the_file(tmp_path, capsys, fmt):
    urls = tmp_path / f"urls.{fmt}"
    caption = "a caf\xe9 at night".encode("latin-1")
    urls.write_bytes(b'{"url": "http://127.0.0.1:9/a.jpg", "caption": "' + caption + b'"}\n' if fmt == "jsonl"
                     else b"caption\turl\n" + caption + b"\thttp://127.0.0.1:9/a.jpg\n")
    path = tmp_path / "ingest.yaml"
    path.write_text(f"ingest:\n  sources: [{{path: '{urls}', format: {fmt}}}]\n")
    code, error = run_cli(capsys, "ingest", str(path), "--out", str(tmp_path / "run"))
    lines = [line for line in error.splitlines() if line.startswith("loom:")]
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"loom: config error: ingest.sources: source {urls}: not UTF-8 text (")
    assert lines[0].endswith("); save it as UTF-8")
    assert "Traceback" not in error


@pytest.mark.parametrize("shares", ["{en: 0.7, zh: 0.2}", "{en: 1.5}"])
def test_language_shares_that_do_not_add_up_to_one_are_refused(tmp_path, capsys, shares):
    path = ingest_yaml(tmp_path, f"  languages: {shares}\n")
    code, error = run_cli(capsys, "ingest", str(path), "--out", str(tmp_path / "run"))
    assert code == 2 and "ingest.languages" in error and "normalise_languages: true" in error


# A value out of range or of the wrong type, in every section: (section, its YAML body, the key named).
# Each base below is otherwise valid, so the probe's key is the only one at fault.
BASES = {
    "demo_data": "",
    "ingest": "  sources: [{path: urls.parquet}]\n",
    "render": "  datasets: [{adapter: pairs, path: ingest}]\n",
    "pack": "  outputs: {instruct: {datasets: [vqav2]}}\n",
    "train": "",
}
PROBES = [
    ("demo_data", "  pair_scenes: -1\n", "demo_data.pair_scenes"),
    ("demo_data", "  train_scenes: -5\n", "demo_data.train_scenes"),
    ("demo_data", "  val_scenes: ten\n", "demo_data.val_scenes"),
    ("demo_data", "  port: 70000\n", "demo_data.port"),
    ("demo_data", "  messy: maybe\n", "demo_data.messy"),
    ("ingest", "  samples_per_shard: 0\n", "ingest.samples_per_shard"),
    ("ingest", "  retries: -3\n", "ingest.retries"),
    ("ingest", "  download_shard_size: -5\n", "ingest.download_shard_size"),
    ("ingest", "  image_size: 0\n", "ingest.image_size"),
    ("ingest", "  image_size: '224'\n", "ingest.image_size"),
    ("ingest", "  max_bytes: -1\n", "ingest.max_bytes"),
    ("ingest", "  timeout: -1\n", "ingest.timeout"),
    ("ingest", "  max_seconds: 0\n", "ingest.max_seconds"),
    ("ingest", "  max_seconds: .inf\n", "ingest.max_seconds"),
    ("ingest", "  encode_quality: 500\n", "ingest.encode_quality"),
    ("ingest", "  threads: 0\n", "ingest.threads"),
    ("ingest", "  threads: true\n", "ingest.threads"),
    ("ingest", "  languages: {en: 0.7, zh: 0.2}\n", "ingest.languages"),
    ("ingest", "  filters: {caption_words: [77, 3]}\n", "ingest.filters.caption_words"),
    ("ingest", "  filters: {near_duplicate_radius: 999}\n", "ingest.filters.near_duplicate_radius"),
    ("ingest", "  resize_mode: stretch\n", "ingest.resize_mode"),
    ("ingest", "  partitions: 0\n", "ingest.partitions"),
    ("ingest", "  max_shard_attempts: 0\n", "ingest.max_shard_attempts"),
    ("ingest", "  allowed_networks: [10.0.0.0/33]\n", "ingest.allowed_networks"),
    ("ingest", "  sources: [{path: urls.xlsx, format: xlsx}]\n", "ingest.sources[0].format"),
    ("render", "  datasets: [{adapter: pairs, path: ingest, limit: -5}]\n", "render.datasets[0].limit"),
    ("render", "  part_records: 0\n", "render.part_records"),
    ("render", "  ray: sometimes\n", "render.ray"),
    ("render", "  mixture: {total: 0}\n", "render.mixture.total"),
    ("render", "  mixture: {adjustments: {okvqa: -1}}\n", "render.mixture.adjustments.okvqa"),
    ("render", "  seed: 1.5\n", "render.seed"),
    ("pack", "  seq_len: 100.5\n", "pack.seq_len"),
    ("pack", "  seq_len: 32\n", "pack.seq_len"),
    ("pack", "  window: 0\n", "pack.window"),
    ("pack", "  mode: zigzag\n", "pack.mode"),
    ("pack", "  tokenizer: {path: tok, train: {vocab_size: 400}}\n", "pack.tokenizer"),
    ("pack", "  tokenizer: {train: {vocab_size: 0}}\n", "pack.tokenizer.train.vocab_size"),
    ("pack", "  outputs: {instruct: {datasets: [vqav2], weights: {vqav2: -1}}}\n", "pack.outputs.instruct.weights.vqav2"),
    ("train", "  batch_size: -2\n", "train.batch_size"),
    ("train", "  grad_accum: 0\n", "train.grad_accum"),
    ("train", "  max_grad_norm: 0\n", "train.max_grad_norm"),
    ("train", "  checkpoint_every: -1\n", "train.checkpoint_every"),
    ("train", "  workers: 0\n", "train.workers"),
    ("train", "  device: tpu9\n", "train.device"),
    ("train", "  stages: {pretrain: {lr: 1e-4}}\n", "train.stages.pretrain.lr"),  # YAML reads 1e-4 as text
    ("train", "  stages: {pretrain: {epochs: 0}}\n", "train.stages.pretrain.epochs"),
    ("train", "  stages: {pretrain: {lr: .nan}}\n", "train.stages.pretrain.lr"),
    ("train", "  stages: {pretrain: {warmup_ratio: 1.5}}\n", "train.stages.pretrain.warmup_ratio"),
    ("train", "  stages: {pretrain: {betas: [0.9]}}\n", "train.stages.pretrain.betas"),
    ("train", "  stages: {pretrain: {trainable: [brain]}}\n", "train.stages.pretrain.trainable[0]"),
    ("train", "  evaluate: {max_new_tokens: 0}\n", "train.evaluate.max_new_tokens"),
    ("train", "  evaluate: {captions: {limit: -1}}\n", "train.evaluate.captions.limit"),
    ("train", "  lr: 0.001\n", "train"),  # a key at the wrong level: unknown
]


@pytest.mark.parametrize("name, body, key", PROBES, ids=[f"{key}={body.strip()}" for _, body, key in PROBES])
def test_a_value_out_of_range_or_of_the_wrong_type_is_one_line_naming_its_key(tmp_path, capsys, name, body, key):
    base = "" if body.split(":")[0] == BASES[name].split(":")[0] else BASES[name]  # the probe replaces that key
    code, error = refusal(tmp_path, capsys, "run" if name == "demo_data" else name, f"{name}:\n{base}{body}")
    assert code == 2 and error.startswith(f"loom: config error: {key}: ") and error.count("\n") == 1, error
    assert "Traceback" not in error and "expected" in error
    assert not (tmp_path / "run").exists()  # refused before any work


def test_a_section_evaluate_is_pointed_under_train(tmp_path, capsys):
    code, error = refusal(tmp_path, capsys, "train", "train: {}\nevaluate: {limit: 8}\n")
    assert code == 2 and error == "loom: config error: evaluate: not a section of its own; expected under train:, " \
                                  "as train.evaluate\n"


def test_a_misspelt_section_is_named_with_the_sections(tmp_path, capsys):
    code, error = refusal(tmp_path, capsys, "run", "trian: {batch_size: 2}\n")
    assert code == 2 and error == f"loom: config error: trian: unknown section; expected some of {', '.join(SECTIONS)}\n"
    assert SECTIONS[0] == "demo_data" and "train" in SECTIONS


def test_a_learning_rate_yaml_reads_as_text_names_the_fix(tmp_path, capsys):
    code, error = refusal(tmp_path, capsys, "train", "train: {stages: {instruct: {lr: 2e-5}}}\n")
    assert code == 2 and "train.stages.instruct.lr: '2e-5' is text" in error and "write 1.0e-4" in error


def test_a_bad_train_section_stops_loom_run_before_the_demo_data_is_written(tmp_path, capsys):
    code, error = refusal(tmp_path, capsys, "run", "demo_data: {pair_scenes: 4, train_scenes: 4, val_scenes: 2}\n"
                                                 "train: {grad_accum: 0}\n")
    assert code == 2 and error.startswith("loom: config error: train.grad_accum: 0 is too small")
    assert not (tmp_path / "run").exists()


def test_a_stage_the_preset_lacks_stops_loom_run_before_any_work(tmp_path, capsys):
    code, error = refusal(tmp_path, capsys, "run", "demo_data: {pair_scenes: 4, train_scenes: 4, val_scenes: 2}\n"
                                                 "pack: {preset: llava-1.5-tiny, outputs: {instruct: {datasets: [vqav2]}}}\n"
                                                 "train: {stages: {finetune: {max_steps: 2}}}\n")
    assert code == 2 and error == ("loom: config error: train.stages.finetune: preset llava-1.5-tiny has no such "
                                   "stage; its stages are ['pretrain', 'instruct']\n")
    assert not (tmp_path / "run").exists()


def test_config_check_lists_every_problem_and_a_stage_command_the_first(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text("ingest:\n  sources: [{path: urls.parquet}]\n  threads: 0\n  retries: -3\n"
                    "train: {batch_size: -2}\n")
    code, error = run_cli(capsys, "config", "check", str(path))
    assert code == 2 and error.splitlines() == [
        "loom: config error: ingest.threads: 0 is too small; expected a whole number from 1 to 4096 (download "
        "threads per shard)",
        "loom: config error: ingest.retries: -3 is too small; expected a whole number from 0 to 100 (extra tries "
        "of a failed URL)",
        "loom: config error: train.batch_size: -2 is too small; expected a whole number >= 1 (packed sequences per "
        "micro-batch)"]
    code, error = run_cli(capsys, "ingest", str(path), "--out", str(tmp_path / "run"))
    assert code == 2 and error.count("\n") == 1
    assert error.startswith("loom: config error: ingest.threads:") and "(and 2 more: `loom config check" in error


@pytest.mark.parametrize("shipped", sorted((Path(__file__).parents[1] / "jobs" / "configs").glob("*.yaml")),
                         ids=lambda path: path.name)
def test_every_shipped_config_passes_config_check(shipped, tmp_path, capsys):
    code = main(["config", "check", str(shipped), "--out", str(tmp_path)])
    assert code == 0 and capsys.readouterr().out.startswith(f"ok: {shipped}")


def test_the_json_schema_accepts_a_shipped_config_and_refuses_a_probe(tmp_path, capsys):
    jsonschema = pytest.importorskip("jsonschema")
    assert main(["config", "schema", "--out", str(tmp_path / "loom.schema.json")]) == 0
    schema = json.loads((tmp_path / "loom.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    quickstart = yaml.safe_load((Path(__file__).parents[1] / "jobs" / "configs" / "quickstart.yaml").read_text())
    assert list(validator.iter_errors(quickstart)) == []
    assert not validator.is_valid({**quickstart, "ingest": {**quickstart["ingest"], "samples_per_shard": 0}})
    assert not validator.is_valid({"train": {"device": "tpu9"}})
    assert schema["properties"]["ingest"]["anyOf"][0]["$ref"] == "#/$defs/Ingest"
    assert schema["$defs"]["Ingest"]["properties"]["samples_per_shard"]["default"] == 1000


def test_config_schema_prints_the_schema(capsys):
    assert main(["config", "schema"]) == 0
    assert list(json.loads(capsys.readouterr().out)["properties"]) == list(SECTIONS)


def test_shares_are_rescaled_only_when_asked():
    from jobs.ingest import ingest_settings

    cfg = ingest_settings({"ingest": {"sources": [{"path": "urls.parquet"}], "languages": {"en": 7, "zh": 3},
                                      "normalise_languages": True}})
    assert cfg["languages"] == {"en": 7, "zh": 3}


def test_an_unusable_out_folder_is_named_not_an_errno(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    config = tmp_path / "pack.yaml"
    config.write_text("pack:\n  outputs: {instruct: {datasets: [vqav2]}}\n")
    code, error = run_cli(capsys, "pack", str(config), "--out", str(blocker / "run"))
    assert code == 2 and error.strip() == f"loom: {blocker / 'run'}: Not a directory"


def test_loom_report_of_a_folder_without_any_stage_output_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a run")
    code, error = run_cli(capsys, "report", str(tmp_path))
    assert code == 2 and "no finished stage here" in error
    assert not (tmp_path / "report.html").exists()
