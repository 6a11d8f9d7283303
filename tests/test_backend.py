import pytest
import torch

import tltorch_ext
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


def test_recorded_auto_order_is_merged_and_used(tmp_path, monkeypatch):
    table = tmp_path / "auto_backends.json"
    table.write_text('{"bss": {"cpu": ["reference", "cpu"]}}')
    monkeypatch.setattr(_backend, "AUTO_TABLE", table)
    _backend._auto_table.cache_clear()
    try:
        _backend.record_auto_orders({"bss": {"cuda": ["triton", "cuda"]}})
        assert _backend.auto_order("bss", "cpu") == ("reference", "cpu")
        assert _backend.auto_order("bss", "cuda") == ("triton", "cuda")
        assert _backend.resolve("bss", "cpu") == "reference"
    finally:
        _backend._auto_table.cache_clear()
