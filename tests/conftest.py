import os
import tempfile

import pytest
import torch

# Without a GPU, Triton kernels run on CPU tensors in Triton's interpreter. It must be set before
# triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# auto's choices must not depend on measurements this machine's user recorded.
os.environ["TLTORCH_EXT_CACHE"] = tempfile.mkdtemp(prefix="tltorch_ext_test_cache_")

import tltorch_ext  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


# The suite tests every backend it finds; so that a build failure cannot pass as a green run
# with fewer backends, the compiled CPU kernels and the Triton interpreter must be there, unless
# TLTORCH_EXT_TEST_WITHOUT names the missing ones (e.g. "cpu,triton") on purpose.
REQUIRED_CPU_BACKENDS = ("cpu", "triton")


def pytest_configure(config):
    excused = {b for b in os.environ.get("TLTORCH_EXT_TEST_WITHOUT", "").split(",") if b}
    found = tltorch_ext.available_backends("cpu")
    missing = [b for b in REQUIRED_CPU_BACKENDS if b not in found and b not in excused]
    if missing:
        from tltorch_ext import _ext  # noqa: PLC0415

        reason = _ext._load()[1] or "the extension loads"
        raise pytest.UsageError(
            f"backends {missing} are not available on CPU tensors (found {found}; _C: {reason}). "
            "Build the extension (pip install --no-build-isolation --no-deps -e .) and install "
            "triton, or set TLTORCH_EXT_TEST_WITHOUT=" + ",".join(missing) + " to test without."
        )


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
