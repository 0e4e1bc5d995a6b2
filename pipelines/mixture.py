"""The training mixture: how many records of each dataset an instruction-tuning corpus holds.

InstructBLIP samples dataset d with probability proportional to sqrt(S_d), its size, then adjusts a
few by hand: A-OKVQA (multiple choice) down, OK-VQA (open-ended) up. The paper gives no coefficients,
so Loom's defaults are its own, and a config may replace them. An offline corpus realises the
probabilities as counts: a dataset drawn more often than its size repeats its records (each
repetition draws its own template), one drawn less keeps a deterministic subset.
"""
from __future__ import annotations

import hashlib
import math

# Loom's choice for the paper's unpublished manual adjustments (arXiv 2305.06500, Sec. 2.4).
DEFAULT_ADJUSTMENTS = {"aokvqa": 0.5, "okvqa": 2.0}
WEIGHTINGS = ("sqrt", "size", "uniform")


def target_shares(sizes: dict[str, int], weighting: str = "sqrt",
                  adjustments: dict[str, float] | None = None) -> dict[str, float]:
    """Each dataset's share of the mixture: sqrt(size) (or size, or 1) times its adjustment, normalised."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"render.mixture.weighting: {weighting!r}; expected one of {', '.join(WEIGHTINGS)}")
    adjustments = DEFAULT_ADJUSTMENTS if adjustments is None else adjustments
    base = {"sqrt": math.sqrt, "size": float, "uniform": lambda size: 1.0}[weighting]
    weights = {name: base(size) * adjustments.get(name, 1.0) for name, size in sizes.items() if size > 0}
    total = sum(weights.values())
    return {name: weights.get(name, 0.0) / total if total else 0.0 for name in sizes}


def plan_counts(shares: dict[str, float], total: int) -> dict[str, int]:
    """Records per dataset: `total` split by `shares`, rounded so the counts add up to `total` exactly
    (largest remainders first, ties by name)."""
    exact = {name: share * total for name, share in shares.items()}
    counts = {name: math.floor(value) for name, value in exact.items()}
    short = total - sum(counts.values())
    for name in sorted(exact, key=lambda n: (-(exact[n] - counts[n]), n))[:short]:
        counts[name] += 1
    return counts


def draw(record_ids: list[str], count: int, seed: int) -> list[tuple[int, int]]:
    """Which records fill `count` places: (index into record_ids, repetition), in a seeded order.

    Whole passes over every record first, then the first records of a seeded shuffle, so a dataset
    is never repeated more than one time more than any of its records."""
    if not record_ids:
        return []
    order = sorted(range(len(record_ids)),
                   key=lambda i: hashlib.sha256(f"{seed}:{record_ids[i]}".encode()).digest())
    passes, rest = divmod(count, len(record_ids))
    chosen = [(i, repetition) for repetition in range(passes) for i in order]
    chosen += [(i, passes) for i in order[:rest]]
    return sorted(chosen)
