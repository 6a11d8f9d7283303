"""SyncStochNorm and the distributed helpers (docs/api_stochnorm.md).

Two CPU processes (gloo, 127.0.0.1 only, free port, bounded time) run every distributed scenario
once on their part of a batch and save what they saw; the tests compare those parts with
single-process StochNorm/BatchNorm on the whole batch. SyncStochNorm's scenarios run once per CPU
backend (its local parts are the StochNorm phase ops of the selected backend), within the same
spawn; the whole-batch oracles run the ``reference`` backend.
"""
from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import tltorch_ext
from tltorch_ext.adaptation import EmaTeacher
from tltorch_ext.distill import CRDLoss
from tltorch_ext.distributed import all_gather_batch, is_distributed
from tltorch_ext.finetune import BiTuning, StochNorm1d, StochNorm2d, StochNorm3d, SyncStochNorm, bi_tuning
from tltorch_ext.finetune.sync_stochnorm import sync_stoch_norm
from tltorch_ext.ops.stoch_norm import stoch_norm
from op_testing import CPU_BACKENDS

pytestmark = pytest.mark.distributed

WORLD = 2
N, C = 6, 4
FIXED_MASK = torch.tensor([True, False, False, True])
RANK0_SEED = 20  # its two Bernoulli(0.5) draws over C = 4 channels are mixed: checked below
INIT_TIMEOUT_S = 30
TOTAL_TIMEOUT_S = 240


# ---------------------------------------------------------------- shared by workers and oracles

def _batch():
    """(x, upstream gradient) of the whole batch: channel means far from 0 and unequal scales."""
    g = torch.Generator().manual_seed(1234)
    scale = torch.tensor([0.5, 1.0, 2.0, 3.0]).view(1, C, 1, 1)
    shift = torch.tensor([3.0, -1.0, 0.0, 10.0]).view(1, C, 1, 1)
    x = torch.randn(N, C, 3, 3, generator=g) * scale + shift
    return x, torch.randn(N, C, 3, 3, generator=g)


def _rows(rank):
    return slice(rank * N // WORLD, (rank + 1) * N // WORLD)


def _uneven_rows(rank):
    return slice(0, 2) if rank == 0 else slice(2, N)


def _norm(cls, **kwargs):
    """A norm layer with non-trivial affine parameters and running statistics."""
    kwargs.setdefault("momentum", 0.3)
    norm = cls(C, **kwargs)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, C))
        norm.bias.copy_(torch.linspace(-1.0, 1.0, C))
        if norm.track_running_stats:
            norm.running_mean.copy_(torch.tensor([2.5, -0.5, 0.3, 9.0]))
            norm.running_var.copy_(torch.tensor([0.4, 1.5, 3.0, 8.0]))
    return norm.train()


def _run_norm(norm, x, upstream, steps=2):
    """`steps` training forwards (the second uses the statistics the first updated), each
    back-propagating Σ y·upstream; returns the last output, the accumulated gradients, the state."""
    x = x.clone().requires_grad_()
    for _ in range(steps):
        y = norm(x)
        (y * upstream).sum().backward()
    state = {k: v.detach().clone() for k, v in norm.state_dict().items()}
    return {"y": y.detach(), "x_grad": x.grad, "weight_grad": norm.weight.grad,
            "bias_grad": norm.bias.grad, **state}


def _small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), StochNorm2d(8, p=0.5), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


def _train_data():
    g = torch.Generator().manual_seed(99)
    return torch.randn(N, 3, 5, 5, generator=g), torch.randint(0, 5, (N,), generator=g)


def _train(model, teacher, x, labels, steps=2):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        nn.functional.cross_entropy(model(x), labels).backward()
        optimizer.step()
        optimizer.zero_grad()
        teacher.update()


def _trained_state(model, teacher):
    return {**{k: v.detach().clone() for k, v in model.state_dict().items()},
            **{f"ema.{k}": v.clone() for k, v in teacher.state_dict().items()}}


class _CRDStudent(nn.Module):
    """A student and its CRD loss fed the group's batch: the DDP-safe recipe of
    docs/api_distributed.md (single process: all_gather_batch is the identity)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.student = nn.Linear(3, 6)
        self.crd = CRDLoss(6, 5, feat_dim=4, nce_k=3, n_data=10)

    def forward(self, x, f_t, idx, contrast_idx):
        return self.crd(*(all_gather_batch(t) for t in (self.student(x), f_t, idx, contrast_idx)))


def _crd_steps(steps=2):
    """Per step the whole batch (x, f_t, idx, contrast_idx); step 2 revisits examples 0-2."""
    g = torch.Generator().manual_seed(21)
    batches = []
    for idx in (torch.tensor([0, 1, 2, 3, 4, 5]), torch.tensor([2, 7, 0, 8, 1, 9])):
        noise = torch.randint(0, 10, (N, 3), generator=g)
        batches.append((torch.randn(N, 3, generator=g), torch.randn(N, 5, generator=g), idx,
                        torch.cat([idx.unsqueeze(1), noise], dim=1)))
    return batches[:steps]


def _train_crd(model, rows=slice(None)):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for batch in _crd_steps():
        model(*(t[rows] for t in batch)).backward()
        optimizer.step()
        optimizer.zero_grad()


# ---------------------------------------------------------------- scenarios run on every rank

def _all_on_rank0(rank):
    return slice(0, N) if rank == 0 else slice(N, N)


def _scenario_module(kwargs, rows=_rows):
    def run(rank):
        x, upstream = _batch()
        return _run_norm(_norm(SyncStochNorm, **kwargs), x[rows(rank)], upstream[rows(rank)])
    return run


def _scenario_fixed_mask(dtype=torch.float32, rows=_rows):
    def run(rank):
        # Rank 1 proposes the complement: the group must use rank 0's mask.
        x, upstream = (t.to(dtype)[rows(rank)] for t in _batch())
        norm = _norm(StochNorm2d, dtype=dtype)
        x = x.clone().requires_grad_()
        mask = FIXED_MASK if rank == 0 else ~FIXED_MASK
        y, batch_mean, batch_var, used, count = sync_stoch_norm(
            x, norm.weight, norm.bias, norm.running_mean, norm.running_var, mask, norm.eps)
        (y * upstream).sum().backward()
        return {"y": y.detach(), "x_grad": x.grad, "weight_grad": norm.weight.grad,
                "bias_grad": norm.bias.grad, "batch_mean": batch_mean, "batch_var": batch_var,
                "mask": used, "count": count}
    return run


def _scenario_random_mask_float64(rank):
    # Uneven parts, ranks seeded differently: the group draws rank 0's masks (both steps).
    x, upstream = (t.double()[_uneven_rows(rank)] for t in _batch())
    norm = _norm(SyncStochNorm, p=0.5, dtype=torch.float64)
    torch.manual_seed(RANK0_SEED + rank)
    return _run_norm(norm, x, upstream)


def _scenario_large_mean(rank):
    x = 100.0 + 0.01 * torch.randn(N, 2, 4, generator=torch.Generator().manual_seed(5))
    _, _, batch_var, _, _ = sync_stoch_norm(x[_rows(rank)], None, None, None, None, None)
    return {"batch_var": batch_var}


def _scenario_random_mask(rank):
    # Ranks seeded differently; running statistics far from the batch's so that the output
    # reveals which channels used the batch statistics (their group mean is exactly β = 0).
    channels = 64
    norm = SyncStochNorm(channels, p=0.5, affine=False)
    norm.running_mean.fill_(-5.0)
    x = torch.randn(N, channels, 2, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(10 + rank)
    proposal = torch.rand(channels) < 0.5
    torch.manual_seed(10 + rank)
    y = all_gather_batch(norm(x[_rows(rank)]).detach())
    return {"group_channel_mean": y.mean((0, 2)), "proposal": proposal,
            "running_mean": norm.running_mean.clone(), "running_var": norm.running_var.clone()}


def _scenario_ddp(rank):
    model = SyncStochNorm.convert_sync_stochnorm(_small_model())
    # No buffer broadcast: the running statistics must agree by themselves.
    ddp = DistributedDataParallel(model, broadcast_buffers=False)
    teacher = EmaTeacher(model, alpha=0.5)
    x, labels = _train_data()
    torch.manual_seed(100 + rank)
    _train(ddp, teacher, x[_rows(rank)], labels[_rows(rank)])
    return _trained_state(model, teacher)


def _scenario_crd(rank):
    model = _CRDStudent()
    _train_crd(DistributedDataParallel(model, broadcast_buffers=False), _rows(rank))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _bituning():
    torch.manual_seed(5)
    encoder = bi_tuning.Classifier(torch.nn.Linear(6, 8), 3, projection_dim=4, features_dim=8)
    return BiTuning(encoder, None, 3, K=4).train()


def _bituning_batch():
    g = torch.Generator().manual_seed(8)
    labels = torch.tensor([0, 2, 0, 1, 0, 2])
    return torch.randn(N, 6, generator=g), torch.randn(N, 6, generator=g), labels


def _bituning_queues(model, rows=slice(None)):
    model(*(t[rows] for t in _bituning_batch()))
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith("queue")}


def _scenario_bituning(rank):
    return _bituning_queues(_bituning(), _rows(rank))


def _scenario_all_gather(rank):
    rows = rank + 2  # unequal batch sizes: 2 and 3
    t = (torch.arange(rows * 2, dtype=torch.float32).view(rows, 2) + 100 * rank).requires_grad_()
    gathered = all_gather_batch(t)
    # Each rank's loss weighs the gathered rows by (rank + 1)·row index.
    coefficient = (rank + 1) * torch.arange(gathered.shape[0], dtype=torch.float32).view(-1, 1)
    (gathered * coefficient).sum().backward()
    index = all_gather_batch(torch.full((rows,), rank, dtype=torch.int64))
    return {"gathered": gathered.detach(), "grad": t.grad, "index": index,
            "distributed": is_distributed()}


# Run once per CPU backend: SyncStochNorm's local parts are that backend's phase ops.
SYNC_SCENARIOS = {
    "p1": _scenario_module({"p": 1.0}),
    "p0": _scenario_module({"p": 0.0}),
    "p1_cumulative": _scenario_module({"p": 1.0, "momentum": None}),
    "no_running_stats": _scenario_module({"p": 0.5, "track_running_stats": False}),
    "empty_rank": _scenario_module({"p": 1.0}, rows=_all_on_rank0),
    "fixed_mask": _scenario_fixed_mask(),
    "fixed_mask_float64_uneven": _scenario_fixed_mask(torch.float64, _uneven_rows),
    "random_mask_float64_uneven": _scenario_random_mask_float64,
    "large_mean": _scenario_large_mean,
}
# Run once, on the reference backend.
SCENARIOS = {
    "random_mask": _scenario_random_mask,
    "ddp": _scenario_ddp,
    "all_gather": _scenario_all_gather,
    "crd": _scenario_crd,
    "bituning": _scenario_bituning,
}


def _loopback_interface():
    names = [name for _, name in socket.if_nameindex() if name.startswith("lo")]
    return names[0] if names else None


def _worker(rank, port, out_dir):
    interface = _loopback_interface()
    if interface is not None:
        os.environ["GLOO_SOCKET_IFNAME"] = interface  # keep gloo's traffic on loopback
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=timedelta(seconds=INIT_TIMEOUT_S))
    try:
        with tltorch_ext.set_backend("reference"):
            results = {name: scenario(rank) for name, scenario in SCENARIOS.items()}
        for backend in CPU_BACKENDS:
            with tltorch_ext.set_backend(backend):
                results[backend] = {name: scenario(rank)
                                    for name, scenario in SYNC_SCENARIOS.items()}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What every rank saved, run once for the module: [rank0's dict, rank1's dict]."""
    out_dir = tmp_path_factory.mktemp("distributed")
    context = mp.start_processes(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + TOTAL_TIMEOUT_S
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"distributed workers did not finish within {TOTAL_TIMEOUT_S} s")
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


@pytest.fixture
def reference_backend():
    with tltorch_ext.set_backend("reference"):
        yield


# ---------------------------------------------------------------- comparisons

TOL = {"rtol": 1e-5, "atol": 1e-5}
TOL64 = {"rtol": 1e-10, "atol": 1e-12}


def _assert_matches_whole_batch(parts, whole, tol=TOL):
    """Parts concatenate to the whole batch's output and input gradient; parameter gradients
    sum to the whole batch's (DDP's reduction); buffers equal the whole batch's on every rank."""
    torch.testing.assert_close(torch.cat([h["y"] for h in parts]), whole["y"], **tol)
    torch.testing.assert_close(torch.cat([h["x_grad"] for h in parts]), whole["x_grad"], **tol)
    for name in ("weight_grad", "bias_grad"):
        torch.testing.assert_close(sum(h[name] for h in parts), whole[name], **tol)
    for part in parts:
        assert part.keys() == whole.keys()
        for name in whole.keys() - {"y", "x_grad", "weight_grad", "bias_grad"}:
            torch.testing.assert_close(part[name], whole[name], **tol, msg=name)


@pytest.mark.parametrize("scenario, oracles", [
    ("p1", [(StochNorm2d, {"p": 1.0}), (nn.BatchNorm2d, {})]),
    ("p0", [(StochNorm2d, {"p": 0.0})]),
    ("p1_cumulative", [(nn.BatchNorm2d, {"momentum": None})]),
    ("no_running_stats", [(nn.BatchNorm2d, {"track_running_stats": False})]),
    ("empty_rank", [(nn.BatchNorm2d, {})]),  # rank 1's input is (0, C, 3, 3)
])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_half_batches_match_whole_batch(ranks, reference_backend, backend, scenario, oracles):
    x, upstream = _batch()
    for cls, kwargs in oracles:
        whole = _run_norm(_norm(cls, **kwargs), x, upstream)
        _assert_matches_whole_batch([r[backend][scenario] for r in ranks], whole)


@pytest.mark.parametrize("dtype, scenario", [
    (torch.float32, "fixed_mask"), (torch.float64, "fixed_mask_float64_uneven")])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fixed_mask_uses_rank0_mask_and_matches_whole_batch(ranks, reference_backend, backend,
                                                            dtype, scenario):
    x, upstream = (t.to(dtype) for t in _batch())
    norm = _norm(StochNorm2d, dtype=dtype)
    x = x.clone().requires_grad_()
    y, _, _, batch_mean, batch_var = stoch_norm(x, norm.weight, norm.bias, norm.running_mean,
                                                norm.running_var, FIXED_MASK, norm.eps)
    (y * upstream).sum().backward()
    parts = [r[backend][scenario] for r in ranks]
    tol = TOL64 if dtype == torch.float64 else TOL
    _assert_matches_whole_batch(
        [{k: h[k] for k in ("y", "x_grad", "weight_grad", "bias_grad")} for h in parts],
        {"y": y.detach(), "x_grad": x.grad, "weight_grad": norm.weight.grad,
         "bias_grad": norm.bias.grad}, tol)
    for part in parts:
        assert torch.equal(part["mask"], FIXED_MASK)
        assert part["count"] == N * 9
        torch.testing.assert_close(part["batch_mean"], batch_mean, **tol)
        torch.testing.assert_close(part["batch_var"], batch_var, **tol)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_uneven_ranks_with_random_masks_match_whole_batch_float64(ranks, reference_backend,
                                                                  backend):
    # Rank 0 holds 2 samples, rank 1 holds 4, each rank seeded differently: output, gradients and
    # running statistics (two steps, the second normalizing with the first's) equal one process
    # drawing rank 0's masks over the whole batch.
    draws = []
    for seed in (RANK0_SEED, RANK0_SEED + 1):
        torch.manual_seed(seed)
        draws.append(torch.stack([torch.rand(C) < 0.5 for _ in range(2)]))
    assert all(0 < int(d.sum()) < C for d in draws[0])  # both kinds of channel, both steps
    assert not torch.equal(draws[0], draws[1])  # rank 1's own draws would differ
    x, upstream = (t.double() for t in _batch())
    torch.manual_seed(RANK0_SEED)
    whole = _run_norm(_norm(StochNorm2d, p=0.5, dtype=torch.float64), x, upstream)
    _assert_matches_whole_batch([r[backend]["random_mask_float64_uneven"] for r in ranks], whole,
                                TOL64)


def test_group_variance_is_accurate_when_mean_dominates(ranks):
    # float32 Σx²/N − mean² would lose everything here (mean² = 1e4, variance = 1e-4).
    x = 100.0 + 0.01 * torch.randn(N, 2, 4, generator=torch.Generator().manual_seed(5))
    expected = x.double().var((0, 2), correction=0).float()
    for r in ranks:
        for backend in CPU_BACKENDS:
            torch.testing.assert_close(r[backend]["large_mean"]["batch_var"], expected, rtol=1e-3,
                                       atol=0, msg=backend)


def test_random_mask_is_rank0s_draw_on_every_rank(ranks):
    proposals = [r["random_mask"]["proposal"] for r in ranks]
    assert not torch.equal(proposals[0], proposals[1])  # the ranks' own draws differ
    for r in ranks:
        used_batch_stats = r["random_mask"]["group_channel_mean"].abs() < 1e-4
        assert torch.equal(used_batch_stats, proposals[0])
        assert 0 < int(used_batch_stats.sum()) < used_batch_stats.numel()
        for name in ("running_mean", "running_var"):
            assert torch.equal(r["random_mask"][name], ranks[0]["random_mask"][name])


def test_ddp_step_keeps_ranks_identical_and_matches_whole_batch(ranks, reference_backend):
    # Parameters, SyncStochNorm statistics and the EMA teacher (parameters and copied buffers).
    model = _small_model()
    teacher = EmaTeacher(model, alpha=0.5)
    x, labels = _train_data()
    torch.manual_seed(100)  # rank 0's seed: the same masks as the group's
    _train(model, teacher, x, labels)
    expected = _trained_state(model, teacher)
    _assert_ranks_identical_and_close([r["ddp"] for r in ranks], expected)
    initial = _small_model().state_dict()
    for name in ("0.weight", "ema.teacher.0.weight", "1.running_var", "ema.teacher.1.running_var"):
        assert not torch.allclose(expected[name], initial[name.removeprefix("ema.teacher.")]), name


def _assert_ranks_identical_and_close(states, expected):
    for name, value in states[0].items():
        assert torch.equal(states[1][name], value), name
    assert expected.keys() == states[0].keys()
    for name, value in expected.items():
        torch.testing.assert_close(states[0][name], value, **TOL, msg=name)


def test_crd_banks_stay_identical_when_fed_the_gathered_batch(ranks):
    # Without buffer broadcast, the memory banks, the normalizers Z and the trained weights agree
    # across ranks and with one process training on the whole batch.
    model = _CRDStudent()
    initial_bank = model.crd.contrast.memory_s.clone()
    _train_crd(model)
    expected = model.state_dict()
    _assert_ranks_identical_and_close([r["crd"] for r in ranks], expected)
    moved = (expected["crd.contrast.memory_s"] - initial_bank).abs().sum(1) > 0
    assert moved.tolist() == [True, True, True, True, True, True, False, True, True, True]


def test_bituning_queues_hold_the_whole_groups_keys(ranks):
    # Each rank sees half the batch; both enqueue all of it, as one process on the whole batch.
    _assert_ranks_identical_and_close([r["bituning"] for r in ranks],
                                      _bituning_queues(_bituning()))


def test_all_gather_batch_concatenates_and_sums_gradients(ranks):
    expected = torch.cat([torch.arange(4.0).view(2, 2), torch.arange(6.0).view(3, 2) + 100])
    for r in ranks:
        assert r["all_gather"]["distributed"] is True
        torch.testing.assert_close(r["all_gather"]["gathered"], expected, rtol=0, atol=0)
        assert torch.equal(r["all_gather"]["index"], torch.tensor([0, 0, 1, 1, 1]))
    # d/d(row i) of Σ_r (r + 1)·i·row_i summed over both ranks' losses = 3·i.
    row_index = torch.arange(5.0).view(-1, 1).expand(5, 2)
    torch.testing.assert_close(ranks[0]["all_gather"]["grad"], 3 * row_index[:2])
    torch.testing.assert_close(ranks[1]["all_gather"]["grad"], 3 * row_index[2:])


# ---------------------------------------------------------------- single process

@pytest.mark.parametrize("sync_kwargs, cls, shape", [
    ({"p": 0.5}, StochNorm2d, (N, C, 3, 3)),
    ({"p": 0.5, "momentum": None}, StochNorm1d, (N, C)),
    ({"p": 0.5, "track_running_stats": False}, StochNorm3d, (N, C, 2, 2, 2)),
])
def test_single_process_fallback_equals_stochnorm(reference_backend, sync_kwargs, cls, shape):
    assert not is_distributed()
    g = torch.Generator().manual_seed(3)
    x, upstream = torch.randn(shape, generator=g) + 2, torch.randn(shape, generator=g)
    torch.manual_seed(11)
    got = _run_norm(_norm(SyncStochNorm, **sync_kwargs), x, upstream)
    torch.manual_seed(11)
    want = _run_norm(_norm(cls, **sync_kwargs), x, upstream)
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_eval_is_batchnorm_eval(reference_backend):
    x, _ = _batch()
    sync, bn = _norm(SyncStochNorm).eval(), _norm(nn.BatchNorm2d).eval()
    torch.testing.assert_close(sync(x), bn(x), rtol=1e-6, atol=1e-6)


# gradcheck's many forwards take minutes in the Triton interpreter; the Triton phases are checked
# against closed forms in test_stochnorm.py and over two ranks above.
@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "triton"])
def test_sync_stoch_norm_gradients_float64(backend):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, C, 5, dtype=torch.float64, generator=g).requires_grad_()
    weight = torch.rand(C, dtype=torch.float64, generator=g).add(0.5).requires_grad_()
    bias = torch.randn(C, dtype=torch.float64, generator=g).requires_grad_()
    running_mean = torch.randn(C, dtype=torch.float64, generator=g)
    running_var = torch.rand(C, dtype=torch.float64, generator=g) + 0.5
    with tltorch_ext.set_backend(backend):
        for mask in (FIXED_MASK, None):
            assert torch.autograd.gradcheck(
                lambda x, w, b: sync_stoch_norm(x, w, b, running_mean, running_var, mask)[0],
                (x, weight, bias))


def test_convert_sync_stochnorm_copies_state():
    inner = _norm(StochNorm2d, p=0.3).eval()
    inner.num_batches_tracked.fill_(7)
    inner.bias.requires_grad_(False)
    model = nn.Sequential(nn.Conv2d(3, C, 1), nn.Sequential(inner, StochNorm1d(5, affine=False)))
    group_free = SyncStochNorm.convert_sync_stochnorm(model)
    assert group_free is model
    converted, plain = model[1][0], model[1][1]
    assert type(converted) is SyncStochNorm and type(plain) is SyncStochNorm
    assert converted.p == 0.3 and converted.momentum == 0.3 and not converted.training
    assert converted.process_group is None
    assert converted.weight.requires_grad and not converted.bias.requires_grad
    for name, value in inner.state_dict().items():
        assert torch.equal(converted.state_dict()[name], value), name
    assert plain.weight is None and plain.num_features == 5
    top = SyncStochNorm.convert_sync_stochnorm(StochNorm3d(2, dtype=torch.float64))
    assert type(top) is SyncStochNorm and top.running_mean.dtype == torch.float64
    conv_only = nn.Conv2d(1, 1, 1)
    assert SyncStochNorm.convert_sync_stochnorm(conv_only) is conv_only


def test_all_gather_batch_is_identity_when_not_distributed():
    t = torch.randn(3, 2)
    assert all_gather_batch(t) is t


def test_bad_arguments():
    with pytest.raises(ValueError, match="p must be a finite number in"):
        SyncStochNorm(C, p=1.5)
    with pytest.raises(TypeError, match="process_group must be None or a torch.distributed"):
        SyncStochNorm(C, process_group="world")
    with pytest.raises(ValueError, match=r"SyncStochNorm\(4\) got input with 3 channels"):
        SyncStochNorm(C)(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="expects input of 2 or 3 or 4 or 5 dimensions"):
        SyncStochNorm(C)(torch.randn(C))
    with pytest.raises(TypeError, match="module must be an nn.Module"):
        SyncStochNorm.convert_sync_stochnorm("model")
    x, mean, var = torch.randn(4, C), torch.zeros(C), torch.ones(C)
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        sync_stoch_norm(x, None, None, mean, var, torch.ones(C))
    with pytest.raises(ValueError, match=r"mask must have shape \(4,\)"):
        sync_stoch_norm(x, None, None, mean, var, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="running_mean and running_var are required"):
        sync_stoch_norm(x, None, None, None, None, FIXED_MASK)
    with pytest.raises(TypeError, match="x must be float16, bfloat16, float32 or float64"):
        sync_stoch_norm(x.long(), None, None, mean, var, FIXED_MASK)
    with pytest.raises(ValueError, match="more than one value per channel over the process"):
        sync_stoch_norm(x[:1], None, None, mean, var, FIXED_MASK)
    with pytest.raises(ValueError, match=r"tensor must have a batch dimension .* got shape \(\)"):
        all_gather_batch(torch.tensor(1.0))
    with pytest.raises(TypeError, match="tensor must be a torch.Tensor"):
        all_gather_batch([1, 2])
    with pytest.raises(TypeError, match="process_group must be None"):
        is_distributed(process_group=0)


def test_docs_examples_run(reference_backend):
    text = (Path(__file__).parents[1] / "docs" / "api_distributed.md").read_text()
    blocks = text.split("```python\n")[1:]
    assert len(blocks) == 2
    for block in blocks:
        exec(compile(block.split("```")[0], "api_distributed.md", "exec"), {})
