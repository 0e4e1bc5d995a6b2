"""A careless config gets a one-line `loom: config error: <key>: ...` before any work, never a traceback:
duplicate keys, bytes that are not UTF-8, language shares that do not add up, paths that cannot be used."""
from __future__ import annotations

import pytest

from jobs.cli import main


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def ingest_yaml(tmp_path, body: str):
    (tmp_path / "urls.parquet").write_bytes(b"")  # never read: the config is refused first
    path = tmp_path / "ingest.yaml"
    path.write_text(f"ingest:\n  sources: [{{path: '{tmp_path / 'urls.parquet'}'}}]\n{body}")
    return path


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path, capsys):
    path = ingest_yaml(tmp_path, "  seed: 1\n  image_size: 64\n  seed: 2\n")
    code, error = run_cli(capsys, "ingest", str(path), "--out", str(tmp_path / "run"))
    assert code == 2 and error.startswith("loom: config error:") and "seed: given twice (lines 3 and 5)" in error
    assert not (tmp_path / "run").exists()


def test_a_config_that_is_not_utf8_is_refused(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("ingest:\n  sources: []\n# café\n".encode("latin-1"))
    code, error = run_cli(capsys, "ingest", str(path), "--out", str(tmp_path / "run"))
    assert code == 2 and "not UTF-8 text" in error and error.count("\n") == 1


@pytest.mark.parametrize("shares", ["{en: 0.7, zh: 0.2}", "{en: 1.5}"])
def test_language_shares_that_do_not_add_up_to_one_are_refused(tmp_path, capsys, shares):
    path = ingest_yaml(tmp_path, f"  languages: {shares}\n")
    code, error = run_cli(capsys, "ingest", str(path), "--out", str(tmp_path / "run"))
    assert code == 2 and "ingest.languages" in error and "normalise_languages: true" in error


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
