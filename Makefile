# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv and install.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU machines: the local CPU wheel. GPU users: `make TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu128" ...`
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,ort,serve,ray
OUT    ?= artifacts/demo

.PHONY: venv demo test lint clean

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

lint: venv
	$(PY) -m ruff check engine export train benchmarks tests serve

clean:
	rm -rf $(VENV) artifacts runs
