# Two commands for a newcomer: `make demo` (the main job) and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-fast lab benchmark toyworld clean

# torch is pinned (constraints.txt) so that pip takes the CPU build here instead of several GB of CUDA wheels;
# on a GPU machine install your own torch first and drop `-c constraints.txt` if it disagrees.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m disentkit demo --out outputs

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not browser"

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

benchmark: $(STAMP)
	$(BIN)/python benchmarks/run.py

# One piece (at most 170 min) of training the bundled UNet further, from the committed checkpoint in
# checkpoints/toyworld-unet (any machine: the training scenes are re-rendered from their seed). Commit that folder
# after each piece and run again until it says "finished"; then export and measure (docs/toyworld.md). A model from
# scratch: $(BIN)/python -m disentkit.toyworld.train --out runs/toyworld
toyworld: $(STAMP)
	$(BIN)/python -m disentkit.toyworld.continue_unet --minutes 170 $(if $(TOYWORLD_DEVICE),--device $(TOYWORLD_DEVICE))

clean:
	rm -rf outputs .pytest_cache
