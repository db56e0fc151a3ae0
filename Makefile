# The two commands of README.md:  make demo  (the main job)  and  make test  (what CI runs).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
MODEL  := intent_service/models/retail.skops
PY_REQS := requirements.txt requirements-dev.txt intent_service/requirements.txt intent_service/requirements-dev.txt localrunner/requirements.txt devstack/requirements.txt infra/requirements-dev.txt bench/requirements.txt console/requirements.txt console/requirements-dev.txt
# The console's browser tests drive Debian's chromium through Playwright (Playwright's own browser download cannot
# work on these machines); CJK fonts so Korean text renders in screenshots.
CHROMIUM := /usr/bin/chromium
# The prediction cache's Redis on the local stack (devstack/stack.py RedisServer): Debian's redis-server, started by
# the stack on a free port, memory only.
REDIS := /usr/bin/redis-server
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)

.PHONY: install demo run test lint unit bench clean console-screenshots

install: $(VENV)/.installed devstack/node_modules/.installed ops/kql/node_modules/.installed $(MODEL) $(CHROMIUM) $(REDIS)

$(VENV)/.installed: $(PY_REQS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $@

devstack/node_modules/.installed: devstack/package.json devstack/package-lock.json
	npm ci --prefix devstack --no-audit --no-fund --loglevel=error
	touch $@

# Kusto's parser (Kusto.Language) for the ops queries check (tests/test_ops_queries.py, ops/kql/check_kql.js).
ops/kql/node_modules/.installed: ops/kql/package.json ops/kql/package-lock.json
	npm ci --prefix ops/kql --no-audit --no-fund --loglevel=error
	touch $@

# The retail intent model: rebuilt when its data, its training code or the shipped sentence encoder
# (intent_service/encoders/all-MiniLM-L6-v2, committed; nothing is downloaded) changes. build-retail
# itself skips the work when the model already matches the data, the configuration and the encoder.
MODEL_DEPS := $(wildcard intent_service/data/retail/*) intent_service/model.py intent_service/training.py \
	intent_service/features.py intent_service/encoder.py $(wildcard intent_service/encoders/all-MiniLM-L6-v2/*)

# Only when chromium is missing (an existing file is up to date for make): apt-get update once, then the install.
$(CHROMIUM):
	$(SUDO) apt-get update
	$(SUDO) apt-get install -y chromium fonts-noto-cjk

# Only when redis-server is missing, as chromium. The package's own service is not wanted (the stack starts its
# own): on machines without systemd it is not started anyway.
$(REDIS):
	$(SUDO) apt-get update
	$(SUDO) apt-get install -y redis-server

$(MODEL): $(VENV)/.installed $(MODEL_DEPS)
	$(BIN)/python -m intent_service build-retail
	touch $@

## The main job: start the local stack, run the scripted bilingual conversation, stop. ARGS="--payload FILE" to post your own webhook.
demo: install
	$(BIN)/python -m tools.demo $(ARGS)

## Leave the local stack up for manual curl calls (Ctrl-C stops it), prediction cache on (a redis-server); ARGS=--no-cache without it.
run: install
	$(BIN)/python -m tools.demo run $(ARGS)

## Every test: lint and type check, then unit, contract, integration and end-to-end (starts the local services it needs).
test: install lint
	$(BIN)/python -m pytest $(ARGS)

## Lint (ruff, ruff.toml) and type check (mypy, mypy.ini: the fakes are checked against their ports).
lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

## Benchmark: queue chain vs monolith under load (bench/README.md). ARGS="--rates 5,20 --duration 10" etc.
bench: install
	$(BIN)/python -m bench.run $(ARGS)

## README's console screenshots (docs/console/*.png), taken by the console's browser tests on the real local stack.
console-screenshots: install
	CONSOLE_SCREENSHOTS_DIR=docs/console $(BIN)/python -m pytest console/tests/test_browser.py $(ARGS)

## Unit tests only (no servers).
unit: install
	$(BIN)/python -m pytest tests -m "not stack" -k "not cosmos and not azurite and not standin and not intent-service" $(ARGS)

clean:
	rm -rf $(VENV) devstack/node_modules ops/kql/node_modules .stack $(MODEL)
