"""Builds tltorch_ext._C: the C++ CPU kernels always; the CUDA kernels too when the installed torch
has CUDA and nvcc is found. Build with --no-build-isolation so the installed torch is used."""
import glob
import os

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

# -g0: no debug info (the default -g from Python's build flags doubles compile time and .so size).
CXX_FLAGS = ["-O3", "-g0", "-fopenmp"]
NVCC_FLAGS = ["-O3", "-lineinfo"]


def _with_cuda() -> bool:
    if os.environ.get("TLTORCH_EXT_NO_CUDA") == "1":
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None


def extension():
    sources = ["csrc/bindings.cpp", *sorted(glob.glob("csrc/cpu/*.cpp"))]
    common = dict(name="tltorch_ext._C", include_dirs=[os.path.abspath("csrc")],
                  extra_link_args=["-fopenmp"])
    if not _with_cuda():
        return CppExtension(sources=sources, extra_compile_args={"cxx": CXX_FLAGS}, **common)
    # Default to the Hopper and Ampere targets unless the user chose with TORCH_CUDA_ARCH_LIST.
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    sources += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*_binding.cpp"))
    return CUDAExtension(
        sources=sources,
        define_macros=[("WITH_CUDA", None)],
        extra_compile_args={"cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS},
        **common,
    )


setup(ext_modules=[extension()], cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})
