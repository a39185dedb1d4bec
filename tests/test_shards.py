"""A batch split into shards on threads (pcsym.models.shards): the single-batch maths, reproducibly."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch

from pcsym.models import shards
from pcsym.config import ModelConfig
from pcsym.training.distributed import World
from pcsym.errors import PcsymError
from pcsym.models.classifier import build_model
from pcsym.models.shards import Shards, forward, forward_backward


def _model(**kw):
    torch.manual_seed(0)
    cfg = dict(group="so3", class_names=["a", "b", "c"], points=256, widths=(8, 16, 32), edge_features="ppf",
               sampling="random-fps")
    cfg.update(kw)
    return build_model(ModelConfig(**cfg)).train()


def _batch(b=6):
    gen = torch.Generator().manual_seed(1)
    pos = torch.randn(b, 256, 3, generator=gen)
    normals = torch.nn.functional.normalize(torch.randn(b, 256, 3, generator=gen), dim=-1)
    return pos, normals, torch.arange(b) % 3


def _step(model, n, pos, normals, labels):
    model = copy.deepcopy(model)
    torch.manual_seed(2)  # the same random downsampling and dropout
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    with Shards(n) as sh:
        logits, loss = forward_backward(model, sh, pos, normals, labels, loss_fn)
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), loss.item(), grads, {k: b.clone() for k, b in model.named_buffers()}


@pytest.mark.parametrize("n", [2, 3, 4])
def test_a_sharded_step_computes_the_whole_batch_step(n):
    """Logits, loss, every parameter's gradient and the norms' running averages equal the unsharded
    step's (float summation order aside): the norms see the whole batch, shard 0 alone updates their
    averages, the sampling order's random numbers are the same. 6 clouds in 4 shards: unequal shards."""
    model = _model()
    batch = _batch()
    ref_logits, ref_loss, ref_grads, ref_buffers = _step(model, 1, *batch)
    logits, loss, grads, buffers = _step(model, n, *batch)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-5)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert grads.keys() == ref_grads.keys()
    scale = max(g.abs().max().item() for g in ref_grads.values())
    for name, g in ref_grads.items():  # against the largest gradient: BN-cancelled biases have ~0 gradients
        assert (grads[name] - g).abs().max().item() < 1e-4 * scale, name
    for name, b in ref_buffers.items():
        torch.testing.assert_close(buffers[name], b, rtol=1e-4, atol=1e-6, msg=name)
    moved = [k for k in ref_buffers if "running_mean" in k and ref_buffers[k].abs().max() > 0]
    assert moved  # the averages did move (the comparison above is not of two untouched buffers)


def test_sharded_steps_are_reproducible_bit_for_bit():
    model = _model(group="o2", sampling="random")
    batch = _batch(4)
    a, b = _step(model, 2, *batch), _step(model, 2, *batch)
    assert torch.equal(a[0], b[0])
    assert all(torch.equal(a[2][k], b[2][k]) for k in a[2])


def test_sharded_forward_and_frozen_trunk():
    """No-gradient forward (the norms' re-estimation) equals the model's; a frozen trunk (eval mode,
    no trainable parameters) trains only the head."""
    model = _model()
    pos, normals, labels = _batch(4)
    torch.manual_seed(3)
    ref = model(pos, normals).detach()
    torch.manual_seed(3)
    with Shards(2) as sh:
        got = forward(model, sh, pos, normals)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    model.blocks.requires_grad_(False)
    model.blocks.eval()
    _, _, grads, _ = _step(model, 2, pos, normals, labels)
    _, _, ref_grads, _ = _step(model, 1, pos, normals, labels)
    assert set(grads) == set(ref_grads) and all(k.startswith("head.") for k in grads)


def test_a_failing_shard_raises_its_error_and_stops_the_others(monkeypatch):
    """Shard 1 fails in its first block; shard 0 would wait for it at the first batch norm forever:
    the exchange is aborted, shard 0 stops, and the caller sees shard 1's own error."""
    model = _model(group="o2", sampling="random")
    real = type(model.blocks[0]).forward

    def broken(self, pos, *a, **kw):
        if shards.current().rank == 1:
            raise ValueError("broken block")
        return real(self, pos, *a, **kw)

    monkeypatch.setattr(type(model.blocks[0]), "forward", broken)
    done = []

    def go():
        with Shards(2) as sh, pytest.raises(ValueError, match="broken block"):
            forward_backward(model, sh, *_batch(4), torch.nn.CrossEntropyLoss())
        done.append(True)

    t = threading.Thread(target=go)
    t.start()
    t.join(60)
    assert done, "the sharded step hung or raised something else"
    assert torch.get_num_threads() >= 1 and shards.current() is None


def test_shards_restore_the_thread_count_and_split_batches_evenly():
    before = torch.get_num_threads()
    with Shards(2) as sh:
        assert torch.get_num_threads() == 1
        assert sh.parts(5) == [slice(0, 2), slice(2, 5)]
        assert sh.parts(1) == [slice(0, 1)]  # never an empty shard
    assert torch.get_num_threads() == before
    with Shards(1) as sh:  # one shard: the plain path, no threads
        assert sh.pool is None and torch.get_num_threads() == before


def test_shard_count_follows_threads_and_refuses_gpus_and_torchrun():
    from pcsym.training.parts import shard_count

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert shard_count(0, cpu, World()) == torch.get_num_threads()
    assert shard_count(3, cpu, World()) == 3
    assert shard_count(0, gpu, World()) == 1
    assert shard_count(0, cpu, World(rank=0, size=2)) == 1
    with pytest.raises(PcsymError, match="--shards"):
        shard_count(2, gpu, World())


def test_a_short_sharded_training_run_gives_the_same_loss_curve(sample_dataset, tmp_path):
    """Issue 12's "same numbers": 3 epochs on the sample with 2 shards and unsharded, seed 0: the same
    loss curve and validation accuracies within float tolerance."""
    from pcsym.config import TrainConfig
    from pcsym.training.train import train

    mcfg = dict(group="so3", points=256, widths=(12, 16), strides=(2, 4), invariant_dims=16, edge_features="ppf",
                sampling="random-fps")
    common = dict(data=str(sample_dataset), batch_size=16, seed=0, threads=2, rotate="so3", eval_rotate="so3",
                  bn_batches=2, epochs=3)
    runs = [train(ModelConfig(**mcfg), TrainConfig(out=str(tmp_path / str(n)), shards=n, **common)) for n in (2, 1)]
    (a, b) = ([h["train_loss"] for h in r["history"]] for r in runs)
    np.testing.assert_allclose(a, b, rtol=2e-4)
    assert [h["val_acc"] for h in runs[0]["history"]] == pytest.approx([h["val_acc"] for h in runs[1]["history"]],
                                                                        abs=0.021)
