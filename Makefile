# wattwise: `make demo` runs the offline tour, `make test` the checks. Both install what they need
# into .venv from the hash-pinned requirements.lock first.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NODE   := tests/conformance/node
NSTAMP := $(NODE)/node_modules/.installed

.PHONY: install install-node demo test lint typecheck unit bench wrk lock clean

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The official openai Node SDK for the client conformance suite, from its package-lock.json (integrity hashes).
install-node: $(NSTAMP)

$(NSTAMP): $(NODE)/package-lock.json $(NODE)/package.json
	npm ci --prefix $(NODE) --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $(NSTAMP)

demo: install
	$(BIN)/wattwise demo

lint: install
	$(BIN)/ruff check src tests bench

typecheck: install
	$(BIN)/mypy

unit: install install-node
	$(BIN)/python -m pytest -q

test: lint typecheck unit

# The gateway benchmark drives load with wrk: installed from the system's packages when missing.
bench: install wrk
	$(BIN)/python bench/gateway_overhead.py
	$(BIN)/python bench/router_latency.py

wrk:
	@command -v wrk >/dev/null 2>&1 || { echo "installing wrk (apt-get install wrk)"; \
	  { apt-get install -y -q wrk || sudo apt-get install -y -q wrk; } >/dev/null 2>&1; } || \
	  { echo "bench/gateway_overhead.py needs wrk: apt-get install wrk (Debian, Ubuntu) or brew install wrk (macOS)"; exit 1; }

# Re-pin after editing requirements.in (needs uv, which is not part of the lock).
lock:
	uv pip compile --python-version 3.11 --generate-hashes requirements.in -o requirements.lock

clean:
	rm -rf $(VENV) $(NODE)/node_modules demo-out .pytest_cache .mypy_cache .ruff_cache
