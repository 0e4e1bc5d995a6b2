"""A full disk: `loom` stops with one line naming the file, the bytes free on its mount and the bytes the write
needs, and the same command run again once space is freed resumes and finishes.

The disk is a real one: a small tmpfs mounted on --out inside a user and mount namespace (`unshare -rm`),
grown with `mount -o remount,size=` between the two runs, as a user would free space."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# mount a tmpfs of $2 on $1, run loom with --out $1, grow the tmpfs to 64 MiB, run it again; each run's
# output in $3.1 / $3.2, its exit status in $3.rc1 / $3.rc2; then the folder is copied to $4
FULL_THEN_FREED = """
set -u
mount -t tmpfs -o size=$2 tmpfs "$1"
shift 2
"$PYTHON" -m jobs.cli "$@" > "$RESULT.1" 2>&1; echo $? > "$RESULT.rc1"
mount -o remount,size=64m tmpfs "$OUT"
"$PYTHON" -m jobs.cli "$@" > "$RESULT.2" 2>&1; echo $? > "$RESULT.rc2"
cp -a "$OUT/." "$COPY/"
"""


def namespaces_allowed() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(not namespaces_allowed(), reason="`unshare -rm` is not permitted on this machine: "
                                "no user and mount namespace to mount a small tmpfs in")


def on_a_small_disk(tmp_path: Path, size: int, *command: str) -> tuple[tuple[int, str], tuple[int, str], Path]:
    """`loom COMMAND --out OUT` with OUT a tmpfs of `size` bytes, then again with it grown: each run's exit
    status and output, and a copy of OUT as the second run left it."""
    out, copy, result = tmp_path / "out", tmp_path / "copy", tmp_path / "result"
    out.mkdir()
    copy.mkdir()
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHON": sys.executable, "OUT": str(out),
           "COPY": str(copy), "RESULT": str(result)}
    subprocess.run(["unshare", "-rm", "sh", "-c", FULL_THEN_FREED, "sh", str(out), str(size), *command, "--out", str(out)], check=True, cwd=REPO, env=env, timeout=600)
    runs = tuple((int(Path(f"{result}.rc{k}").read_text()), Path(f"{result}.{k}").read_text()) for k in (1, 2))
    return runs[0], runs[1], copy


DISK_FULL = re.compile(r"^loom: (?P<path>/\S+): disk full \((?P<free>[\d,]+) bytes free on (?P<mount>/\S+); "
                       r"this write needs about (?P<needed>[\d,]+) bytes.*\); free space .* and re-run: finished parts "
                       r"are kept and it resumes$", re.MULTILINE)


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    """A red/blue render output and its pack output, outside any small disk, and configs reading them."""
    from jobs.pack import run_pack
    from test_train_stages import red_blue_run

    root = tmp_path_factory.mktemp("inputs")
    red_blue_run(root)
    pack = {"preset": "llava-tiny", "input": str(root / "render"), "seq_len": 256, "sequences_per_shard": 2,
            "tokenizer": {"train": {"vocab_size": 400}},
            "outputs": {"instruct": {"datasets": ["mix"]}, "pretrain": {"datasets": ["mix"]}}}
    run_pack({"pack": pack}, root, log=lambda *_: None)
    (root / "pack.yaml").write_text(yaml.safe_dump({"pack": pack}))
    (root / "train.yaml").write_text(yaml.safe_dump({"train": {
        "input": str(root / "pack"), "checkpoint_every": 1, "stages": {"pretrain": {"max_steps": 3},
                                                                      "instruct": {"max_steps": 1}}}}))
    return root


def disk_bytes(folder: Path) -> int:
    """What a folder takes on a tmpfs: each file rounded up to a 4 KiB page."""
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in folder.rglob("*") if p.is_file())


def test_pack_on_a_full_disk_names_the_file_and_the_bytes_and_resumes_once_space_is_freed(configs, tmp_path):
    half = disk_bytes(configs / "pack") // 2 // 4096 * 4096  # the tokenizers and the first output fit, not the rest
    (rc, said), (rc_again, said_again), out = on_a_small_disk(tmp_path, half, "pack", str(configs / "pack.yaml"))
    full = DISK_FULL.search(said)
    assert rc == 2 and full and "Traceback" not in said, said
    assert full["path"].startswith(str(tmp_path / "out" / "pack" / "")) and full["mount"] == str(tmp_path / "out")
    assert int(full["free"].replace(",", "")) < int(full["needed"].replace(",", "")) <= half
    assert rc_again == 0, said_again
    assert "tokenizers kept from the interrupted run" in said_again
    assert sorted(p.name for p in (out / "pack").glob("*/shards/*.parquet")) == \
        sorted(p.name for p in (configs / "pack").glob("*/shards/*.parquet"))


def test_train_on_a_full_disk_names_the_checkpoint_and_its_size_and_resumes_once_space_is_freed(configs, tmp_path):
    import json

    from vlm.checkpoint_files import folder_bytes

    # room for two checkpoints of the first stage, not for the third written beside them
    one = _checkpoint_bytes(configs)
    (rc, said), (rc_again, said_again), out = on_a_small_disk(tmp_path, one * 5 // 2 // 4096 * 4096, "train",
                                                              str(configs / "train.yaml"))
    full = DISK_FULL.search(said)
    assert rc == 2 and full and "Traceback" not in said, said
    checkpoint = str(tmp_path / "out" / "train" / "pretrain" / "checkpoint")
    assert full["path"] == checkpoint or full["path"].startswith(checkpoint + "/")  # safetensors leaves no file
    assert abs(int(full["needed"].replace(",", "")) - one) < one // 10 and "the stage about" in said
    assert rc_again == 0, said_again
    summary = json.loads((out / "train" / "pretrain" / "stage_complete.json").read_text())
    assert summary["steps"] == 3 and summary["resumed_from_step"] == 2
    assert folder_bytes(out / "train" / "pretrain" / "checkpoint") == pytest.approx(one, rel=0.1)


def _checkpoint_bytes(configs: Path) -> int:
    """About what one checkpoint of the first stage takes: its weights in fp32 and the tokenizer beside them."""
    import json

    from vlm.builders import build_model
    from vlm.preset import get_preset

    packed = json.loads((configs / "pack" / "pretrain" / "manifest.json").read_text())
    model = build_model(get_preset("llava-tiny"), 400, packed["image_token_id"], packed["pad_token_id"])
    return sum(p.numel() * 4 for p in model.parameters()) + disk_bytes(configs / "pack" / "tokenizer") + 10 * 4096
