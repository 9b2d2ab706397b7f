# The entry points of the README: `make run` (the main job), `make gpu-smoke` (the GPU tier) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup run gpu-smoke test bench clean

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

# The GPU tier, unattended, on a machine with an NVIDIA GPU and internet: fresh checkout at the pins ->
# strict apply -> compile -> the real model files from the Hugging Face Hub into MODELS (verified; kept,
# so a second run downloads nothing) -> the real-size graph (1024x1024, 8 steps) on CUDA. Results in
# build/gpu-smoke/: report.md (per-step and per-stage times, peak GPU memory, GPU, torch, exit status),
# report.json, smoke/ (PNGs, smoke-report.json, smoke.log). On a failure make says verify's exit code
# ("Error 8") and exits 2; report.md has the code and the failure, and a Rerun line (with SMOKE_PYTHON as
# --python) to paste. A rerun replaces only what verify made in KEEP; one run at a time per KEEP (exit 10).
# With DEVICE=cuda a torch without CUDA is refused (exit 8) before anything is downloaded.
#   make gpu-smoke MODELS=~/models [SMOKE_PYTHON=/path/to/python-with-cuda-torch] [MANIFEST=models.toml]
# DEVICE=cpu TIER=tiny (with a MANIFEST of tiny-tier files) rehearses the same path on a CPU, as the tests do.
MODELS       ?= $(HOME)/models
DEVICE       ?= cuda
TIER         ?=
MANIFEST     ?=
KEEP         ?= build/gpu-smoke
SMOKE_PYTHON ?= $(abspath $(BIN)/python)

gpu-smoke: setup
	ZPATCH_SMOKE_PYTHON=$(SMOKE_PYTHON) $(BIN)/zpatch verify --device $(DEVICE) $(if $(TIER),--tier $(TIER)) \
	  --models $(MODELS) $(if $(MANIFEST),--manifest $(MANIFEST)) --keep $(KEEP)

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
