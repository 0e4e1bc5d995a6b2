"""What a user sees while a stage trains: a progress bar on a terminal, a plain line every N steps in a log.

A bar redrawn with carriage returns is unreadable once stderr goes to a file (`loom run ... 2> run.log`,
a CI log, a Ray worker's log), so the bar is drawn only when stderr is a terminal. Anywhere else the
stage says, every `log_every` steps, one line with the step, loss, learning rate and tokens/s; those lines
always go to the stage's own `train.log` too, terminal or not, and the stage ends with one summary line.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, TextIO

TRAIN_LOG = "train.log"


def on_terminal(stream: TextIO | None = None) -> bool:
    """Whether `stream` (stderr by default, where a bar is drawn) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class StageProgress:
    """Reports one stage's optimizer steps. `show`: tell the user at all (False: only `train.log` is
    written); `bar`: draw a bar instead of lines through `log` (default: whether stderr is a terminal);
    `unit`: what the rate counts (tokens; pairs for a contrastive tower)."""

    def __init__(self, name: str, total_steps: int, start_step: int, start_tokens: int, out_dir: Path,
                 log_every: int = 10, log: Callable[[str], None] = print, show: bool = True,
                 bar: bool | None = None, unit: str = "tokens"):
        self.name, self.total_steps, self.log_every, self.log = name, total_steps, max(1, log_every), log
        self.unit = unit
        self.show = show
        self.file = Path(out_dir) / TRAIN_LOG
        if start_step == 0:
            self.file.unlink(missing_ok=True)  # a stage trained again from its start logs afresh
        self.started = self.last_time = time.perf_counter()
        self.start_step = start_step
        self.start_tokens = self.last_tokens = start_tokens
        self.first_loss = self.last_loss = None
        self.bar = None
        if show and (on_terminal() if bar is None else bar):
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc=name, file=sys.stderr, dynamic_ncols=True)
        if start_step:
            self._write(f"train: {name} resumed at step {start_step}/{total_steps}", to_user=False)

    def step(self, step: int, loss: float, lr: float, tokens: int) -> None:
        """After optimizer step `step` (1-based): its loss and learning rate, and the tokens (units) seen so far."""
        self.first_loss = loss if self.first_loss is None else self.first_loss
        self.last_loss = loss
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
            self.bar.update(1)
        if step % self.log_every and step != self.total_steps:
            return
        now = time.perf_counter()
        rate = (tokens - self.last_tokens) / max(now - self.last_time, 1e-9)  # since the last line
        remaining = (now - self.started) / max(step - self.start_step, 1) * (self.total_steps - step)
        self._write(f"train: {self.name} step {step}/{self.total_steps} loss {loss:.4f} lr {lr:.2e} "
                    f"{self.unit}/s {rate:,.0f} elapsed {_duration(now - self.started)} eta {_duration(remaining)}",
                    to_user=self.bar is None)
        self.last_time, self.last_tokens = now, tokens

    def close(self, step: int, tokens: int) -> str:
        """Ends the bar and says the stage's summary line (also returned)."""
        if self.bar is not None:
            self.bar.close()
        seconds = time.perf_counter() - self.started
        steps = step - self.start_step
        losses = f", loss {self.first_loss:.4f} → {self.last_loss:.4f}" if self.first_loss is not None else ""
        line = (f"train: {self.name} done: {steps} steps in {seconds:.1f} s ({steps / max(seconds, 1e-9):.2f} "
                f"steps/s, {(tokens - self.start_tokens) / max(seconds, 1e-9):,.0f} {self.unit}/s){losses}")
        self._write(line, to_user=True)
        return line

    def _write(self, line: str, to_user: bool) -> None:
        with self.file.open("a") as f:
            f.write(line + "\n")
        if to_user and self.show:
            self.log(line)
