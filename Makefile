# The targets the README promises. Each one creates .venv and installs what it needs.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
REQUIREMENTS := requirements.txt requirements-dev.txt serving/requirements.txt

# The local stack's model and compression; tests/test_repository.py keeps them in step with
# stacks/Pulumi.local.yaml.
MODEL ?= mnist-mlp
COMPRESSION ?= none
SERVE_DIR := build/local

.PHONY: serve test test-fast bench up clean

$(STAMP): $(REQUIREMENTS)
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

serve: $(STAMP)
	$(PY) -m models build --model $(MODEL) --compression $(COMPRESSION) --out $(SERVE_DIR)
	$(PY) -m serving --context $(SERVE_DIR) --host 127.0.0.1 --port 8080

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not docker"

bench: $(STAMP)
	$(PY) bench/prepare.py
	$(PY) bench/serve.py
	$(PY) bench/image.py

clean:
	rm -rf build .pytest_cache
