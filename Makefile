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

# Compile-checks the torch-free CUDA kernels wherever nvcc exists (no GPU needed).
cuda-check:
	@if command -v nvcc >/dev/null 2>&1; then \
		cmake -S . -B build/cuda-check -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null && \
		cmake --build build/cuda-check; \
	else echo "nvcc not found: CUDA compile check skipped"; fi

test: $(STAMP) cuda-check
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) build *.egg-info tltorch_ext/_C*.so
