# Two entry points, both self-installing on a fresh machine:
#   make quickstart   -- a real experiment on embedded defaults (CPU), ends with a plot and a summary
#   make test         -- the linter (ruff) and the test suite (what .ci/run calls)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.engramtier-installed

.PHONY: quickstart test bench install clean

install: $(STAMP)

# torch is installed first at the pinned CPU build when absent: a bare `torch` requirement
# would otherwise pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/engramtier quickstart

# The remote-tier tests start a real redis-server and Redis Cluster (Debian's redis-server) and a real
# Mooncake Store (its wheel needs Debian's libibverbs1); installed here when possible, skipped if not.
test: $(STAMP)
	@{ command -v redis-server >/dev/null && ldconfig -p | grep -q libibverbs.so.1; } || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	    apt-get install -y -qq redis-server libibverbs1 >/dev/null; } || \
	  echo "redis-server or libibverbs1 is not installed: the remote-tier tests that need them will be skipped"
	$(BIN)/ruff check engramtier tests benchmarks
	$(BIN)/python -m pytest -q -n auto

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs
