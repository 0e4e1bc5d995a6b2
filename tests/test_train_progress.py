"""What a user sees while a stage trains (vlm/progress.py), and the CPU threads it trains with (vlm/threads.py).

A tiny LLaVA-1.5 trains six real steps on a real packed corpus in a child process whose stderr is a
terminal (a pty) or a pipe, as `loom train` on a terminal or with its output sent to a file.
"""
from __future__ import annotations

import dataclasses
import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import textwrap
from pathlib import Path

import pytest

from jobs.config import ConfigError, section
from vlm import threads
from vlm.preset import get_preset
from vlm.progress import TRAIN_LOG
from vlm.train import TrainConfig, read_log, train_stage

from test_vlm_data import write_packed_corpus
from test_vlm_train import new_model

STEPS, EVERY = 6, 2
INSTRUCT = get_preset("llava-1.5-tiny").stage("instruct")
LINE = re.compile(r"train: llava-1\.5-tiny/instruct step (\d+)/6 loss (\d+\.\d{4}) lr (\S+) tokens/s ([\d,]+) ")

TRAIN = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import dataclasses
    from test_vlm_train import new_model
    from vlm.preset import get_preset
    from vlm.train import TrainConfig, train_stage

    pack_dir = Path({pack!r})
    stage = dataclasses.replace(get_preset("llava-1.5-tiny").stage("instruct"), max_steps={steps})
    config = TrainConfig(batch_size=2, log_every={every}, tensorboard=False)
    train_stage(new_model(pack_dir), stage, pack_dir, {out!r}, config)
""")


def steps(n: int):
    """llava-1.5-tiny's instruct stage cut to `n` optimizer steps."""
    return dataclasses.replace(INSTRUCT, max_steps=n)


def quiet(**settings) -> TrainConfig:
    return TrainConfig(batch_size=2, progress=False, tensorboard=False, **settings)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    pack_dir, _ = write_packed_corpus(tmp_path_factory.mktemp("corpus"))
    return pack_dir


def train_in_child(pack_dir: Path, out: Path, stderr_on_terminal: bool) -> tuple[str, str]:
    """(stdout, stderr) of a child training the stage, its stderr a pty or a pipe; stdout is a pipe."""
    script = TRAIN.format(tests=str(Path(__file__).parent), pack=str(pack_dir), out=str(out), steps=STEPS, every=EVERY)
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    if not stderr_on_terminal:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout, done.stderr
    terminal, child_end = pty.openpty()
    fcntl.ioctl(child_end, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 24 rows, 120 columns
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=child_end, env=env)
    os.close(child_end)
    drawn = b""
    while True:  # read the terminal until the child closes it
        try:
            chunk = os.read(terminal, 4096)
        except OSError:  # EIO: the child's end is closed
            break
        if not chunk:
            break
        drawn += chunk
    os.close(terminal)
    stdout = child.stdout.read().decode()
    assert child.wait(timeout=300) == 0, drawn.decode(errors="replace")
    return stdout, drawn.decode(errors="replace")


@pytest.fixture(scope="module")
def on_terminal(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("terminal")
    return (out, *train_in_child(corpus, out, stderr_on_terminal=True))


@pytest.fixture(scope="module")
def into_a_file(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("pipe")
    return (out, *train_in_child(corpus, out, stderr_on_terminal=False))


def test_a_terminal_shows_a_progress_bar_with_loss_and_lr(on_terminal):
    _, _, terminal = on_terminal
    assert "\r" in terminal  # redrawn in place
    assert re.search(r"llava-1\.5-tiny/instruct: 100%.*6/6.*loss=\d+\.\d{4}, lr=", terminal)


def test_a_terminal_gets_no_step_lines_only_the_summary(on_terminal):
    _, stdout, _ = on_terminal
    assert not LINE.search(stdout)
    assert re.fullmatch(r"train: llava-1\.5-tiny/instruct done: 6 steps in [\d.]+ s \([\d.]+ steps/s, [\d,]+ "
                        r"tokens/s\), loss \d+\.\d{4} → \d+\.\d{4}\n", stdout)


def test_output_that_is_no_terminal_gets_a_line_every_log_every_steps_and_no_bar(into_a_file):
    out, stdout, stderr = into_a_file
    assert "\r" not in stderr and "it/s" not in stderr
    lines = [LINE.match(line) for line in stdout.splitlines()[:-1]]
    assert all(lines) and [int(m[1]) for m in lines] == [2, 4, 6]
    logged = {r["step"]: r for r in read_log(out)}
    for m in lines:  # the line's loss and lr are the step's, as log.jsonl has them
        record = logged[int(m[1])]
        assert m[2] == f"{record['loss']:.4f}" and m[3] == f"{record['lr']:.2e}"
        assert int(m[4].replace(",", "")) > 0
    assert stdout.splitlines()[-1].startswith("train: llava-1.5-tiny/instruct done: 6 steps in ")


def test_the_stage_log_file_has_the_lines_whether_or_not_a_terminal_showed_a_bar(on_terminal, into_a_file):
    for out, stdout, _ in (on_terminal, into_a_file):
        written = (out / TRAIN_LOG).read_text().splitlines()
        assert [int(LINE.match(line)[1]) for line in written[:-1]] == [2, 4, 6]
        assert written[-1] == stdout.splitlines()[-1]  # the summary line


def test_a_stage_told_to_keep_quiet_says_nothing_but_still_writes_its_log_file(corpus, tmp_path):
    said = []
    train_stage(new_model(corpus), steps(3), corpus, tmp_path, quiet(log_every=1), log=said.append)
    assert said == []
    written = (tmp_path / TRAIN_LOG).read_text().splitlines()
    assert [int(re.match(r"train: \S+ step (\d+)/3 loss ", line)[1]) for line in written[:-1]] == [1, 2, 3]
    assert written[-1].startswith("train: llava-1.5-tiny/instruct done: 3 steps in ")


# ---------------------------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------------------------

def test_a_stage_trains_with_the_threads_it_is_given(corpus, tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        train_stage(new_model(corpus), steps(1), corpus, tmp_path, quiet(threads=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_threads_default_to_omp_num_threads_when_set(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.training_threads() == 1
    assert threads.training_threads(3) == 3  # train.threads, when given, wins


def test_threads_default_to_the_cores_the_process_may_use(monkeypatch, tmp_path):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.training_threads() == len(os.sched_getaffinity(0))
    quota = tmp_path / "cpu.max"  # cgroup v2's file: half a core's quota per period
    quota.write_text("50000 100000\n")
    monkeypatch.setattr(threads, "CGROUP_CPU_MAX", quota)
    assert threads.training_threads() == 1
    quota.write_text("max 100000\n")  # no quota: the affinity decides
    assert threads.training_threads() == len(os.sched_getaffinity(0))


def test_train_threads_below_one_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"^train\.threads: 0 is too small; expected a whole number from 1"):
        section({"train": {"threads": 0}}, "train")


def test_importing_vlm_leaves_openmps_wait_policy_to_the_environment():
    """Spinning threads are ~1.6x faster on idle cores, sleeping ones far faster on busy cores: the user's call."""
    code = "import os, vlm, torch; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          check=True).stdout == "None\n"
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          check=True).stdout == "PASSIVE\n"


def test_a_contrastive_tower_counts_its_rate_in_pairs(tmp_path):
    from vlm.progress import StageProgress

    said = []
    progress = StageProgress("llava-1.5-tiny/tower", 4, 0, 0, tmp_path, log_every=2, log=said.append, bar=False,
                             unit="pairs")
    for step in range(1, 5):
        progress.step(step, loss=4.0 - step / 2, lr=1e-3, tokens=step * 16)
    progress.close(4, 64)
    assert [line.split(" pairs/s ")[0].split()[-6:] for line in said[:-1]] == [
        ["step", "2/4", "loss", "3.0000", "lr", "1.00e-03"], ["step", "4/4", "loss", "2.0000", "lr", "1.00e-03"]]
    assert re.search(r"done: 4 steps in [\d.]+ s \([\d.]+ steps/s, [\d,]+ pairs/s\), loss 3\.5000 → 2\.0000$", said[-1])
    assert (tmp_path / TRAIN_LOG).read_text().splitlines() == said
