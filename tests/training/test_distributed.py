"""training.distributed on real gloo groups of two processes (127.0.0.1)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn as nn

from tests.training.multiproc import PROJECT_ROOT, spawn_ranks
from training.distributed import (Dist, GlobalBatchNorm2d, StopSignals, process_group, rank_seed, sync_batchnorm,
                                  world_from_env, wrap)


BN_INPUT = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 3 + 1


def _checks(x: torch.Tensor) -> dict:
    """Every two-rank check of this file in one group (a spawn costs seconds of imports)."""
    with process_group(torch.device("cpu")) as d:
        return {"rank": d.rank, "world": d.world_size, "backend": d.backend, "shard": d.shard(8),
                "agree": d.agree([d.rank, 5 - d.rank, 0]), "mean": d.mean([float(d.rank)]),
                "broadcast": d.broadcast({"from": d.rank}), "gather": d.gather(d.rank * 10),
                "bn": _batchnorm(d, x), "bn1d": _batchnorm_1d(d, x), "sn": _spectral_norm_buffers(d)}


def _batchnorm_1d(d: Dist, x: torch.Tensor) -> torch.Tensor:
    bn = sync_batchnorm(nn.Sequential(nn.BatchNorm1d(48)))[0]
    return bn(x.flatten(1)[d.shard(len(x))]).detach()


@pytest.fixture(scope="module")
def ranks():
    return spawn_ranks(_checks, args=(BN_INPUT,))


def test_collectives_give_every_rank_the_same_answer(ranks):
    r0, r1 = ranks
    assert (r0["rank"], r1["rank"], r0["world"], r0["backend"]) == (0, 1, 2, "gloo")
    assert (r0["shard"], r1["shard"]) == (slice(0, 4), slice(4, 8))  # disjoint blocks by global rank
    assert r0["agree"] == r1["agree"] == [1, 5, 0]
    assert r0["mean"] == r1["mean"] == [0.5]
    assert r0["broadcast"] == r1["broadcast"] == {"from": 0}
    assert r0["gather"] == r1["gather"] == [0, 10]


def test_single_process_is_rank_0_of_1_without_a_group(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with process_group(torch.device("cpu")) as d:
        assert d == Dist() and d.main and not d.enabled
        assert d.agree([3, 0]) == [3, 0] and d.broadcast("x") == "x" and d.shard(6) == slice(0, 6)
    assert not torch.distributed.is_initialized()
    assert rank_seed(123, 0) == 123 and len({rank_seed(123, r) for r in range(8)}) == 8


def test_a_global_batch_the_world_size_does_not_divide_is_refused():
    with pytest.raises(ValueError, match="batch_size 10 is the global batch .* world size 4; use 8 or 12"):
        Dist(rank=1, world_size=4).per_rank(10)
    assert Dist(rank=3, world_size=4).shard(12) == slice(9, 12)


def test_world_from_env_checks_torchruns_variables():
    assert world_from_env({}) == (0, 1, 0)
    assert world_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == (3, 4, 1)
    with pytest.raises(ValueError, match="RANK 4 is not within WORLD_SIZE 4"):
        world_from_env({"WORLD_SIZE": "4", "RANK": "4"})


def _batchnorm(d: Dist, x: torch.Tensor) -> dict:
    bn = sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)))[0]
    assert type(bn) is GlobalBatchNorm2d
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
    xs = x[d.shard(len(x))].clone().requires_grad_(True)
    y = bn(xs)
    # a loss that is not a plain sum (whose gradient through BN would vanish); each rank's loss is the
    # mean over its rows, the global loss the mean of the ranks' (what DDP's gradient averaging computes)
    loss = (y * torch.linspace(-1, 1, y.numel()).view_as(y)).pow(2).mean() / d.world_size
    loss.backward()
    grad_w = bn.weight.grad.clone()
    torch.distributed.all_reduce(grad_w)
    return {"y": y.detach(), "gx": xs.grad, "gw": grad_w, "mean": bn.running_mean.clone(),
            "var": bn.running_var.clone()}


def test_global_batchnorm_on_two_ranks_is_batchnorm_of_the_whole_batch(ranks):
    x = BN_INPUT
    r0, r1 = ranks[0]["bn"], ranks[1]["bn"]
    ref = nn.BatchNorm2d(3)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
    xr = x.clone().requires_grad_(True)
    y = ref(xr)
    w = torch.cat([torch.linspace(-1, 1, y.numel() // 2).view(4, 3, 4, 4)] * 2)
    ((y * w).pow(2).mean(dim=(1, 2, 3)).view(2, 4).mean(1).sum() / 2).backward()  # mean per rank, averaged
    assert torch.allclose(torch.cat([r0["y"], r1["y"]]), y.detach(), atol=1e-5)
    assert torch.allclose(torch.cat([r0["gx"], r1["gx"]]), xr.grad, atol=1e-6)
    assert torch.allclose(r0["gw"], ref.weight.grad, atol=1e-5)
    y1 = nn.BatchNorm1d(48)(x.flatten(1)).detach()  # (B, C) inputs: BatchNorm1d, as in the MLP models
    assert torch.allclose(torch.cat([ranks[0]["bn1d"], ranks[1]["bn1d"]]), y1, atol=1e-5)
    for r in (r0, r1):  # running statistics: those of the whole batch, on every rank
        assert torch.allclose(r["mean"], ref.running_mean, atol=1e-6)
        assert torch.allclose(r["var"], ref.running_var, atol=1e-5)


def _spectral_norm_buffers(d: Dist) -> list:
    from torch.nn.utils.parametrizations import spectral_norm

    torch.manual_seed(0)
    conv = spectral_norm(nn.Conv2d(2, 4, 3))
    model = wrap(conv, d)
    with torch.no_grad():  # a rank whose power-iteration vector drifted
        conv.parametrizations.weight[0]._u.add_(float(d.rank))
    model(torch.randn(2, 2, 5, 5)).sum().backward()
    return [b.clone() for b in conv.buffers()]


def test_ddp_keeps_spectral_norm_power_iteration_buffers_identical_across_ranks(ranks):
    r0, r1 = ranks[0]["sn"], ranks[1]["sn"]
    assert len(r0) == 2  # u and v
    for a, b in zip(r0, r1):
        assert torch.equal(a, b)


def test_a_signal_is_recorded_for_the_step_boundary():
    # what was there before (SIG_IGN, not default_int_handler, when the suite runs as a background job)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with StopSignals(verbose=False) as stop:
        assert stop.received == 0
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop.received == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGINT)  # within the debounce window: the same stop request
        time.sleep(0.05)
        assert stop.received == signal.SIGTERM
    assert {s: signal.getsignal(s) for s in before} == before  # restored


def test_a_second_signal_aborts_at_once():
    code = ("import os, signal, time\n"
            "from training.distributed import StopSignals\n"
            "with StopSignals(debounce_s=0.1) as s:\n"
            "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.3)\n"
            "    assert s.received == signal.SIGTERM\n"
            "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(5)\n"
            "print('not aborted')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGTERM, proc
    assert "not aborted" not in proc.stdout and "second SIGTERM: aborting" in proc.stderr
