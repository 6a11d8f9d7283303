"""SyncStochNorm in training over 2 gloo ranks on CPU, forward+backward (docs/api_distributed.md).

Each candidate is one training step of ``SyncStochNorm(64)`` on both ranks at once, each rank
holding its own 16×64×56×56 part of the batch: the layer on the ``reference`` backend (the plain
PyTorch form SyncStochNorm had before it ran the phase ops: the baseline) and on every compiled
backend. The two ranks are processes spawned once per case, on the first call, and kept for its
calls: the timed call sends both the backend to run, and returns when both have finished their step
(the pipe round trip is well under 1 % of a step). Each rank uses half of the CPU threads. The
peak memory is not measured (reported as n/a): the work happens in the ranks, where the parent's
allocation records do not reach. CPU only (gloo); on CUDA there are no cases.
"""
from __future__ import annotations

import atexit
import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .. import _backend
from .harness import Case, register

WORLD = 2
SHAPE = (16, 64, 56, 56)  # per rank
INIT_TIMEOUT_S = 60


def _serve(rank, port, conn, shape, memory_format):
    """A rank: join the group, build its layer and data, then run one step per received backend
    name (None: leave). Replies True, or the error's text."""
    torch.set_num_threads(max(1, (os.cpu_count() or WORLD) // WORLD))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=timedelta(seconds=INIT_TIMEOUT_S))
    from ..finetune.sync_stochnorm import SyncStochNorm  # noqa: PLC0415 (after the group exists)

    try:
        torch.manual_seed(rank)
        x = torch.randn(shape).contiguous(memory_format=memory_format).requires_grad_()
        grad_y = torch.randn_like(x)
        norm = SyncStochNorm(shape[1], p=0.5).train()
        while (backend := conn.recv()) is not None:
            try:
                with _backend.set_backend(backend):
                    x.grad = None
                    norm.zero_grad(set_to_none=True)
                    norm(x).backward(grad_y)
                conn.send(True)
            except Exception as error:  # noqa: BLE001  (reported by the parent's call)
                conn.send(f"rank {rank}: {type(error).__name__}: {error}")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Ranks:
    """The two rank processes of one case, started by the first step and stopped at exit."""

    def __init__(self, shape, memory_format):
        self._args = (shape, memory_format)
        self._pipes, self._processes = [], []

    def step(self, backend: str) -> None:
        if not self._processes:
            self._start()
        for pipe in self._pipes:
            pipe.send(backend)
        replies = [pipe.recv() for pipe in self._pipes]
        errors = [r for r in replies if r is not True]
        if errors:
            raise RuntimeError("; ".join(errors))

    def _start(self) -> None:
        context = mp.get_context("spawn")
        port = _free_port()
        for rank in range(WORLD):
            parent, child = context.Pipe()
            process = context.Process(target=_serve, args=(rank, port, child, *self._args),
                                      daemon=True)
            process.start()
            self._pipes.append(parent)
            self._processes.append(process)
        atexit.register(self.close)

    def close(self) -> None:
        for pipe, process in zip(self._pipes, self._processes):
            if process.is_alive():
                pipe.send(None)
            process.join(timeout=10)
        self._pipes, self._processes = [], []


def _case(memory_format) -> Case:
    ranks = _Ranks(SHAPE, memory_format)
    backends = [b for b in _backend.available_backends("cpu") if b != "triton"]
    fmt = "channels_last" if memory_format == torch.channels_last else "NCHW"
    return Case(
        op="sync_stoch_norm",
        group=f"fwd+bwd 2 ranks x {'x'.join(map(str, SHAPE))} fp32 {fmt}",
        candidates={f"SyncStochNorm[{b}]": (lambda b=b: ranks.step(b)) for b in backends},
        baseline="SyncStochNorm[reference]",
        measures_memory=False,
    )


@register("sync_stoch_norm")
def sync_stoch_norm_cases(device: torch.device, quick: bool):
    if device.type != "cpu":
        return
    formats = (torch.contiguous_format,) if quick else (torch.contiguous_format,
                                                         torch.channels_last)
    for memory_format in formats:
        yield _case(memory_format)
