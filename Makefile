# The targets the README promises. Each one creates .venv and installs what it needs.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
REQUIREMENTS := requirements.txt requirements-dev.txt serving/requirements.txt
# The policy pack has its own environment, as `pulumi preview --policy-pack` gives it one:
# pulumi-policy pins a protobuf that onnx cannot use.
POLICY_STAMP := policy/venv/.installed-stamp

# The local stack's model and compression; tests/test_repository.py keeps them in step with
# stacks/Pulumi.local.yaml.
MODEL ?= mnist-mlp
COMPRESSION ?= none
SERVE_DIR := build/local
# make serve PORT=9000; SERVEDMODEL_PORT in the environment is honoured too.
PORT ?= $(or $(SERVEDMODEL_PORT),8080)
# make up: the local stack with a file state backend (no account); PULUMI/DOCKER name the tools.
PULUMI ?= pulumi
DOCKER ?= docker
STATE_DIR := .state

.PHONY: serve test test-fast lint bench up up-prerequisites clean grpc-stubs

$(STAMP): $(REQUIREMENTS)
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

$(POLICY_STAMP): policy/requirements.txt
	test -x policy/venv/bin/python || $(PYTHON) -m venv policy/venv
	policy/venv/bin/python -m pip install --quiet -r policy/requirements.txt
	touch $(POLICY_STAMP)

serve: $(STAMP)
	$(PY) -m models build --model $(MODEL) --compression $(COMPRESSION) --out $(SERVE_DIR)
	$(PY) -m serving --context $(SERVE_DIR) --host 127.0.0.1 --port $(PORT)

# ruff and pyright over the whole tree, configured in pyproject.toml; `make test` runs them first,
# and a finding fails it. pyright's warnings fail too (--warnings): an import it cannot resolve is
# a warning there, so that Pulumi's own run (Pulumi.yaml's typechecker) in a program venv without
# the test dependencies checks what it can. The policy pack is checked with its own venv's packages.
# PYRIGHT_PYTHON_IGNORE_WARNINGS: no look-up of pyright's newest version on PyPI at every run.
lint: $(STAMP) $(POLICY_STAMP)
	$(VENV)/bin/ruff check .
	PYRIGHT_PYTHON_IGNORE_WARNINGS=1 $(VENV)/bin/pyright --warnings --threads 2

test: lint
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not docker"

# The committed gRPC stubs of serving/v2grpc/grpc_predict_v2.proto (a test checks they match).
grpc-stubs: $(STAMP)
	$(PY) serving/v2grpc/generate.py

bench: $(STAMP)
	$(PY) bench/prepare.py
	$(PY) bench/serve.py
	$(PY) bench/image.py

up-prerequisites:
	@command -v $(PULUMI) >/dev/null 2>&1 || { echo "error: the Pulumi CLI ('$(PULUMI)') was not found. Install it (https://www.pulumi.com/docs/install/); no account is needed: make up keeps its state in $(STATE_DIR)/." >&2; exit 1; }
	@$(DOCKER) info >/dev/null 2>&1 || { echo "error: Docker is not available ('$(DOCKER) info' failed). Install Docker and start its engine: the local stack builds the model image into it and runs the model there." >&2; exit 1; }

up: up-prerequisites $(STAMP)
	mkdir -p $(STATE_DIR)
	export PULUMI_BACKEND_URL=file://$(CURDIR)/$(STATE_DIR) PULUMI_CONFIG_PASSPHRASE="$${PULUMI_CONFIG_PASSPHRASE-local}"; \
	$(PULUMI) stack select --create local --non-interactive && $(PULUMI) up --stack local --yes --non-interactive

clean:
	rm -rf build .pytest_cache
