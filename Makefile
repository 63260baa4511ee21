# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create and use a virtual environment at .venv/ in the project root.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODEL := build/example-model.keras
DEMO_ARGS ?= --duration 30
PYTEST_ARGS ?=
NODE_TOOLS := tests/tools/node_modules/.package-lock.json

.PHONY: venv node-tools demo test unit integration lint typecheck check bench bench-quick kafka-up kafka-down clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/pip || { rm -rf $(VENV); $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Node checkers of the deployment artefacts (Grafana dashboard types, KEDA schema, AsyncAPI
# parser), pinned by tests/tools/package-lock.json. Skipped without npm: the tests that need
# them then skip (or fail under LSTM_STREAM_REQUIRE_TOOLS=1, as in CI).
$(NODE_TOOLS): tests/tools/package-lock.json
	if command -v npm >/dev/null; then npm ci --prefix tests/tools --no-audit --no-fund --loglevel=error; fi

node-tools: $(NODE_TOOLS)

$(MODEL): $(STAMP)
	$(VENV)/bin/lstm-stream example-model --out $(MODEL)

## The main job, embedded (no broker): synthetic live feeds through the real engine.
demo: $(MODEL)
	$(VENV)/bin/lstm-stream demo --model $(MODEL) $(DEMO_ARGS)

## Every test: unit tests and integration tests against a real local Kafka broker.
test: $(STAMP) node-tools
	$(PY) -m pytest -q $(PYTEST_ARGS)

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

integration: $(STAMP)
	$(PY) -m pytest -q tests/integration $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check processor tests
	$(VENV)/bin/ruff format --check processor tests
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy

check: lint typecheck test

bench: $(STAMP)
	$(VENV)/bin/lstm-stream bench --out bench-out

bench-quick: $(STAMP)
	$(VENV)/bin/lstm-stream bench --quick --out bench-out

kafka-up:
	deploy/kafka-local/kafka.sh start

kafka-down:
	deploy/kafka-local/kafka.sh stop

clean:
	rm -rf build bench-out .pytest_cache .mypy_cache .ruff_cache
