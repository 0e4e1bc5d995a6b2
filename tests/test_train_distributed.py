"""The staged trainer on N Ray Train workers (TorchTrainer, DDP over gloo on CPU): the same loss curve as one
process with the same global batch."""
from __future__ import annotations

import pytest
import torch

from jobs.ray_runtime import ray_session
from jobs.train import train_stage_on_ray
from vlm.train import read_log, train_stage

from test_vlm_data import write_packed_corpus
from test_vlm_train import INSTRUCT, new_model, quick, same, short, snapshot


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_packed_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def one_process(corpus, tmp_path_factory):
    """The reference every multi-worker run is held to: the stage in one process, 2 rows a step, 4 steps.
    (The model it trained, its log.)"""
    pack_dir, _ = corpus
    out = tmp_path_factory.mktemp("one")
    alone = new_model(pack_dir)
    train_stage(alone, short(INSTRUCT, 4), pack_dir, out, quick(batch_size=2))
    return alone, read_log(out)


def test_two_workers_follow_the_loss_curve_of_one_process_with_the_same_global_batch(corpus, one_process, tmp_path):
    stage = short(INSTRUCT, 4)  # projector and LLM learn, the vision tower stays frozen
    pack_dir, _ = corpus
    alone, one = one_process
    together = new_model(pack_dir)
    frozen_before = snapshot(together.vision_tower)
    with ray_session(num_cpus=2):
        summary = train_stage_on_ray(together, stage, pack_dir, tmp_path / "two", quick(batch_size=1), workers=2)
    two = read_log(tmp_path / "two")
    assert [r["supervised_tokens"] for r in one] == [r["supervised_tokens"] for r in two]
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-4, abs=1e-5)
    for a, b in zip(alone.state_dict().values(), together.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert same(snapshot(together.vision_tower), frozen_before) and summary["steps"] == 4



def test_two_fsdp_workers_shard_the_model_and_follow_the_loss_curve_of_one_process(corpus, one_process, tmp_path):
    """FSDP (parameters, gradients and optimizer state sharded over 2 gloo workers) gives one process's
    curve; its checkpoint holds the whole model and the whole optimizer state, by parameter name."""
    stage = short(INSTRUCT, 4)
    pack_dir, _ = corpus
    alone, one = one_process
    sharded = new_model(pack_dir)
    frozen_before = snapshot(sharded.vision_tower)
    with ray_session(num_cpus=2):
        train_stage_on_ray(sharded, stage, pack_dir, tmp_path / "two", quick(batch_size=1, strategy="fsdp"),
                           workers=2)
    two = read_log(tmp_path / "two")
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-4, abs=1e-5)
    for a, b in zip(alone.state_dict().values(), sharded.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert same(snapshot(sharded.vision_tower), frozen_before)
    saved = torch.load(tmp_path / "two" / "checkpoint" / "optimizer.pt")
    learnt = {name for name, p in alone.named_parameters() if p.requires_grad}
    assert set(saved["state"]) == learnt  # every trainable parameter's whole Adam state


def _fsdp_worker(rank: int, pack_dir, out_dir, port: int, fail_at_step: int | None) -> None:
    """One of two FSDP processes (gloo) running the stage; the lead fails at `fail_at_step`, as a crash would."""
    import os

    import vlm.train

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    if fail_at_step and rank == 0:
        append = vlm.train._append_log

        def crash_at(path, record):
            if record["step"] == fail_at_step:
                raise RuntimeError("crashed")
            append(path, record)

        vlm.train._append_log = crash_at
    model = new_model(pack_dir)
    train_stage(model, short(INSTRUCT, 4), pack_dir, out_dir, quick(batch_size=1, strategy="fsdp", checkpoint_every=2))
    weight = model.language_model.model.layers[0].self_attn.q_proj.weight
    assert weight.to_local().shape[0] == weight.shape[0] // 2  # each worker holds half of every layer
    torch.distributed.destroy_process_group()


def test_a_crashed_fsdp_stage_resumes_from_its_gathered_checkpoint_to_the_same_losses(corpus, one_process, tmp_path):
    import socket

    import torch.multiprocessing as mp

    pack_dir, _ = corpus
    _, one = one_process

    def port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    with pytest.raises(Exception, match="crashed"):  # the lead dies at step 3; the other worker is stopped
        mp.spawn(_fsdp_worker, args=(pack_dir, tmp_path / "sharded", port(), 3), nprocs=2)
    assert [r["step"] for r in read_log(tmp_path / "sharded")] == [1, 2]
    mp.spawn(_fsdp_worker, args=(pack_dir, tmp_path / "sharded", port(), None), nprocs=2)
    resumed = read_log(tmp_path / "sharded")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in one], rel=1e-4, abs=1e-5)


def test_resuming_a_sharded_checkpoint_without_sharding_is_refused(corpus, tmp_path):
    import json

    pack_dir, _ = corpus
    train_stage(new_model(pack_dir), short(INSTRUCT, 2), pack_dir, tmp_path / "s", quick(batch_size=1))
    state_file = tmp_path / "s" / "checkpoint" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "sharded": True}))  # as an FSDP run writes it
    (state_file.parent / "checksums.json").unlink()  # edited by hand: the sizes written with it no longer hold
    (tmp_path / "s" / "stage_complete.json").unlink()
    with pytest.raises(ValueError, match="saved with FSDP sharding, resumed without"):
        train_stage(new_model(pack_dir), short(INSTRUCT, 2), pack_dir, tmp_path / "s", quick(batch_size=1))
