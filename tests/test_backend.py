import pytest
import torch

import tltorch_ext
import tltorch_ext.ops
from tltorch_ext import _backend


def test_reference_always_available():
    assert "reference" in tltorch_ext.available_backends("cpu")
    assert "reference" in tltorch_ext.available_backends(torch.empty(1))


def test_set_backend_context_manager_restores():
    before = tltorch_ext.get_backend()
    with tltorch_ext.set_backend("reference"):
        assert tltorch_ext.get_backend() == "reference"
        assert _backend.resolve("stoch_norm", "cpu") == "reference"
    assert tltorch_ext.get_backend() == before


def test_set_backend_rejects_unknown_name():
    with pytest.raises(ValueError, match="backend must be one of"):
        tltorch_ext.set_backend("fastest")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine")
def test_unavailable_backend_is_refused():
    with pytest.raises(RuntimeError, match="'cuda' is not available"):
        tltorch_ext.set_backend("cuda")


def test_auto_never_picks_the_triton_interpreter_on_cpu():
    assert _backend.resolve("stoch_norm", "cpu") in ("cpu", "reference")


def test_compiled_backend_requires_the_op_in_the_build(monkeypatch):
    from tltorch_ext import _ext

    monkeypatch.setattr(_ext, "has_op", lambda op, backend: False)
    assert "cpu" not in tltorch_ext.available_backends("cpu", op="stoch_norm")
    assert _backend.resolve("stoch_norm", "cpu") == "reference"


def test_recorded_auto_order_goes_to_the_user_cache_and_overrides_the_package(tmp_path,
                                                                            monkeypatch):
    packaged = tmp_path / "package" / "auto_backends.json"
    packaged.parent.mkdir()
    packaged.write_text('{"bss": {"cpu": ["cpu", "reference"]}, "fsp": {"cpu": ["cpu"]}}')
    monkeypatch.setattr(_backend, "AUTO_TABLE", packaged)
    monkeypatch.setenv("TLTORCH_EXT_CACHE", str(tmp_path / "cache"))
    _backend._auto_tables.cache_clear()
    try:
        path = _backend.record_auto_orders({"bss": {"cpu": ["reference", "cpu"],
                                                    "cuda": ["triton", "cuda"]}})
        assert path == tmp_path / "cache" / "auto_backends.json" and path.exists()
        assert packaged.read_text().startswith('{"bss": {"cpu": ["cpu"')  # package untouched
        assert _backend.auto_order("bss", "cpu") == ("reference", "cpu")  # the user's
        assert _backend.auto_order("bss", "cuda") == ("triton", "cuda")
        assert _backend.auto_order("fsp", "cpu") == ("cpu",)  # the package's
        assert _backend.resolve("bss", "cpu") == "reference"
        assert str(path) in tltorch_ext.explain_backend("bss", "cpu")
        assert str(packaged) in tltorch_ext.explain_backend("fsp", "cpu")
    finally:
        _backend._auto_tables.cache_clear()


def test_auto_on_cuda_runs_the_reference_until_a_gpu_measurement_exists(tmp_path, monkeypatch):
    monkeypatch.setattr(_backend, "AUTO_TABLE", tmp_path / "none.json")
    monkeypatch.setenv("TLTORCH_EXT_CACHE", str(tmp_path))
    _backend._auto_tables.cache_clear()
    try:
        for op in ("bss", "fsp", "nst", "stoch_norm"):
            assert _backend.auto_order(op, "cuda") == ("reference",)
            explained = tltorch_ext.explain_backend(op, "cuda")
            assert explained.startswith(
                f"{op} on cuda: runs 'reference'; auto found no measurement")
        with tltorch_ext.set_backend("reference"):
            assert "set_backend('reference')" in tltorch_ext.explain_backend("bss")
    finally:
        _backend._auto_tables.cache_clear()


def _loss_of(op):
    """A scalar loss through ``op``'s forward, and the leaf that needs its gradient."""
    torch.manual_seed(0)
    if op == "stoch_norm":
        x = torch.randn(4, 3, 5, requires_grad=True)
        return tltorch_ext.StochNorm1d(3, p=0.5)(x).square().sum(), x
    if op == "bss":
        x = torch.randn(6, 4, requires_grad=True)
        return tltorch_ext.ops.bss_penalty(x, k=2), x
    if op == "fsp":
        x = torch.randn(2, 3, 4, 4, requires_grad=True)
        return tltorch_ext.ops.fsp_loss(x, x * 2, x.detach().flip(0), x.detach()), x
    x = torch.randn(2, 3, 16, requires_grad=True)
    return tltorch_ext.ops.nst_loss(x, x.detach().flip(0)), x


@pytest.mark.parametrize("op", ["stoch_norm", "bss", "fsp", "nst"])
@pytest.mark.parametrize("in_thread", [False, True])
def test_backward_runs_on_the_forward_backend(op, in_thread, monkeypatch):
    """The backend in force at forward runs backward too: after the choice has changed, and in
    a thread that never set it (autograd's worker threads resolve ``auto``)."""
    import importlib
    import threading

    reference = importlib.import_module(f"tltorch_ext.reference.{op}")
    calls = []
    original = reference.backward
    monkeypatch.setattr(reference, "backward",
                        lambda *args: calls.append(op) or original(*args))
    with tltorch_ext.set_backend("reference"):
        loss, leaf = _loss_of(op)
    if in_thread:
        worker = threading.Thread(target=loss.backward)
        worker.start()
        worker.join()
    else:
        loss.backward()
    assert calls, f"{op}'s backward left the reference backend its forward ran on"
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()


def test_plain_set_backend_is_process_wide_and_the_block_thread_local():
    import threading

    def seen_in_new_thread():
        seen = []
        worker = threading.Thread(target=lambda: seen.append(tltorch_ext.get_backend()))
        worker.start()
        worker.join()
        return seen[0]

    before = tltorch_ext.get_backend()
    try:
        tltorch_ext.set_backend("reference")
        assert tltorch_ext.get_backend() == "reference"
        assert seen_in_new_thread() == "reference"  # a plain call reaches every thread
        with tltorch_ext.set_backend("auto"):
            assert tltorch_ext.get_backend() == "auto"
            assert seen_in_new_thread() == "reference"  # a block stays in its thread
        assert tltorch_ext.get_backend() == "reference"
    finally:
        tltorch_ext.set_backend(before)
    assert tltorch_ext.get_backend() == before
