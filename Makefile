# The two entry points of the README: `make demo` and `make test`. Each creates .venv, installs the
# pinned development set and the package (its C++ extension built with the installed torch), then
# runs. torch is pinned to the CPU build; nothing here may pull a CUDA torch.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SOURCES := setup.py pyproject.toml requirements/dev.txt $(shell find csrc -type f)

.PHONY: demo test bench cuda-check clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) $(SOURCES)
	$(PY) -m pip install -q -r requirements/dev.txt
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tltorch-ext demo

bench: $(STAMP)
	$(VENV)/bin/tltorch-ext bench

# Wherever nvcc exists (no GPU needed): compiles the torch-free CUDA kernels with CMake (ptxas
# report, warnings as errors), then syntax-checks the torch-including CUDA bindings against the
# installed torch headers. A CPU torch wheel lacks one generated CUDA header, stubbed here.
CUDA_STUB := build/cuda-stub
CUDA_HOME ?= /usr/local/cuda
cuda-check: $(STAMP)
	@if command -v nvcc >/dev/null 2>&1; then \
		cmake -S . -B build/cuda-check -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null && \
		cmake --build build/cuda-check && \
		mkdir -p $(CUDA_STUB)/c10/cuda/impl && echo '#pragma once' > $(CUDA_STUB)/c10/cuda/impl/cuda_cmake_macros.h && \
		g++ -std=c++20 -fsyntax-only -DWITH_CUDA -Icsrc -Icsrc/cuda -I$(CUDA_STUB) \
			-I$(CUDA_HOME)/include \
			$$($(PY) -c "import sysconfig, torch.utils.cpp_extension as c; print(' '.join('-I' + p for p in c.include_paths() + [sysconfig.get_paths()['include']]))") \
			csrc/bindings.cpp csrc/cuda/*_binding.cpp && echo "CUDA binding syntax check passed"; \
	else echo "nvcc not found: CUDA compile check skipped"; fi

test: $(STAMP) cuda-check
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) build *.egg-info tltorch_ext/_C*.so
