# MIMEA developer entry points. Run `make help` for the list.

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

REDIS_HOST ?= 127.0.0.1
REDIS_PORT ?= 6379

DEMO_DATA       := demo/data
DEMO_CHECKPOINT := demo/checkpoint
DEMO_CONFIG     := configs/demo.toml
HOST ?= 127.0.0.1
PORT ?= 8000

.DEFAULT_GOAL := help
.PHONY: help install redis test lint serve demo bench clean distclean

help:
	@echo "make test       lint and run the test suite (starts a local Redis if none answers)"
	@echo "make serve      train a demo model on synthetic data if needed and serve it on $(HOST):$(PORT)"
	@echo "make demo       write the synthetic data set and train the demo checkpoint only"
	@echo "make lint       ruff check"
	@echo "make bench      accuracy and serving benchmarks"
	@echo "make clean      remove caches, build outputs and demo/ (distclean: also $(VENV))"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch is installed on its own first so that the pinned CPU build is the one that satisfies
# the project's requirement; reinstalls only when pyproject.toml changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[dev]'
	touch $@

install: $(STAMP)

redis:
	@if command -v redis-cli >/dev/null 2>&1 && \
	    redis-cli -h $(REDIS_HOST) -p $(REDIS_PORT) ping >/dev/null 2>&1; then \
	  echo "redis: answering on $(REDIS_HOST):$(REDIS_PORT)"; \
	elif command -v redis-server >/dev/null 2>&1; then \
	  echo "redis: starting redis-server on $(REDIS_HOST):$(REDIS_PORT)"; \
	  redis-server --daemonize yes --bind $(REDIS_HOST) --port $(REDIS_PORT) \
	    --save "" --appendonly no; \
	  for i in 1 2 3 4 5 6 7 8 9 10; do \
	    redis-cli -h $(REDIS_HOST) -p $(REDIS_PORT) ping >/dev/null 2>&1 && exit 0; \
	    sleep 0.5; \
	  done; \
	  echo "error: redis-server started but does not answer on $(REDIS_HOST):$(REDIS_PORT)" >&2; \
	  exit 1; \
	else \
	  echo "error: no Redis answers on $(REDIS_HOST):$(REDIS_PORT) and redis-server is not" \
	    "installed; install it (Debian/Ubuntu: apt-get install redis-server) or start one" >&2; \
	  exit 1; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) redis
	$(BIN)/ruff check .
	$(BIN)/pytest -q

# Written to a temporary directory first so an interrupted run leaves nothing half-made behind.
$(DEMO_DATA): | $(STAMP)
	rm -rf $@.tmp
	$(BIN)/mimea demo-data --out $@.tmp
	mv $@.tmp $@

$(DEMO_CHECKPOINT): | $(DEMO_DATA)
	@echo "training the demo model with $(DEMO_CONFIG) into $@ (about a minute on a CPU)"
	$(BIN)/mimea train --data $(DEMO_DATA) --out $@ --config $(DEMO_CONFIG)

demo: $(DEMO_CHECKPOINT)

# MIMEA_REDIS_URL is cleared: the demo server uses the in-process cache.
serve: $(STAMP) $(DEMO_CHECKPOINT)
	env -u MIMEA_REDIS_URL $(BIN)/mimea serve --checkpoint $(DEMO_CHECKPOINT) \
	  --host $(HOST) --port $(PORT)

bench: $(STAMP)
	$(BIN)/python -m bench.accuracy
	$(BIN)/python -m bench.serve

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache demo
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
