# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv and install.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU machines: the local CPU wheel. GPU users: `make TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu128" ...`
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,ort,serve,ray
OUT    ?= artifacts/demo

.PHONY: venv demo test lint clean gpu-pylib

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m benchmarks.demo --out $(OUT)

test: venv
	$(PY) -m pytest -q

# ruff, then mypy on the modules that touch TensorRT against tensorrt-stubs (10.13 signatures): the
# stubs go into build/ with --no-deps --target (never into the venv, where `import tensorrt` would then
# succeed as an empty package), and a checked copy with their syntax errors repaired is what mypy reads.
lint: venv
	$(PY) -m ruff check engine export train benchmarks tests tools serve
	$(PY) tools/typecheck_trt.py --build-dir build

# pytest for benchmarks/gpu_run.sh on a GPU machine without it and without network (carry .gpu/pylib).
gpu-pylib:
	PYTHON=$(PYTHON) bash benchmarks/gpu_pylib.sh .gpu/pylib

clean:
	rm -rf $(VENV) artifacts runs
