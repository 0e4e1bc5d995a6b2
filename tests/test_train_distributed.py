"""The staged trainer on N Ray Train workers (TorchTrainer, DDP over gloo on CPU): the same loss curve as one
process with the same global batch."""
from __future__ import annotations

import pytest
import torch

from jobs.ray_runtime import ray_session
from jobs.train import train_stage_on_ray
from vlm.train import read_log, train_stage

from test_vlm_data import write_packed_corpus
from test_vlm_train import INSTRUCT, new_model, quick, same, snapshot


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_packed_corpus(tmp_path_factory.mktemp("corpus"))


def test_two_workers_follow_the_loss_curve_of_one_process_with_the_same_global_batch(corpus, tmp_path):
    stage = INSTRUCT  # projector and LLM learn, the vision tower stays frozen
    pack_dir, _ = corpus
    alone = new_model(pack_dir)
    train_stage(alone, stage, pack_dir, tmp_path / "one", quick(batch_size=2, max_steps=4))
    together = new_model(pack_dir)
    frozen_before = snapshot(together.vision_tower)
    with ray_session(num_cpus=2):
        summary = train_stage_on_ray(together, stage, pack_dir, tmp_path / "two", quick(batch_size=1, max_steps=4),
                                     workers=2)
    one, two = read_log(tmp_path / "one"), read_log(tmp_path / "two")
    assert [r["supervised_tokens"] for r in one] == [r["supervised_tokens"] for r in two]
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-4, abs=1e-5)
    for a, b in zip(alone.state_dict().values(), together.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert same(snapshot(together.vision_tower), frozen_before) and summary["steps"] == 4
