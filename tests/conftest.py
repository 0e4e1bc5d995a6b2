"""Shared fixtures: a small shapes world, written once per test session."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

SMALL_WORLD = dict(seed=3, pair_scenes=120, train_scenes=40, val_scenes=20)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """A shapes world small enough for unit tests (its URL list includes every kind of bad row)."""
    from pipelines.shapes_world import write_demo_data

    out = tmp_path_factory.mktemp("world")
    summary = write_demo_data(str(out), **SMALL_WORLD)
    return out, summary


@pytest.fixture
def fresh_compiler():
    """torch's compiler state cleared before and after: torch 2.13's CPU flex_attention kernel miscompiles
    when a later model's shapes make it recompile with dynamic shapes."""
    import torch

    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
