import os

import pytest
import torch

# Without a GPU, Triton kernels run on CPU tensors in Triton's interpreter. It must be set before
# triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import tltorch_ext  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def cpu_backends():
    """Every concrete backend that runs on CPU tensors here."""
    return tltorch_ext.available_backends("cpu")


def cuda_backends():
    return tltorch_ext.available_backends("cuda") if HAS_CUDA else []


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
