# The two entry points of the README: `make run` (the main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup run test bench clean

$(BIN)/zpatch: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[smoke,test]'
	touch $@

setup: $(BIN)/zpatch

# Fresh checkout at the pins -> strict apply -> compile -> smoke generation (CPU, tiny tier),
# then the negative control on pristine upstream. Images and reports stay in build/verify/.
run: setup
	rm -rf build/verify
	ZPATCH_SMOKE_PYTHON=$(abspath $(BIN)/python) $(BIN)/zpatch verify --control --keep build/verify

# Fixture tests always run; tests that need the real upstreams skip with a reason when
# they are unreachable (configure url.<mirror>.insteadOf to run them offline).
test: setup
	ZPATCH_SMOKE_PYTHON=$(abspath $(BIN)/python) PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest

bench: setup
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m bench.apply_bench
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m bench.rebase_bench
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m bench.drift_bench
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m bench.node_check_bench
	ZPATCH_SMOKE_PYTHON=$(abspath $(BIN)/python) $(BIN)/python -m bench.smoke_bench

clean:
	rm -rf $(VENV) .pytest_cache build
