# The companion's commands. `make figures` and `make test` each set everything up first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
PROFILE ?= quick
FMNIST_SYSTEM := /usr/share/datasets/fashion-mnist

.PHONY: setup data figures smoke test lab bench assignments sweep clean help

help:
	@echo "make figures   set up, then regenerate every figure with the '$(PROFILE)' profile (PROFILE=smoke|quick|paper)"
	@echo "make test      set up, then run the whole test suite"
	@echo "make lab       set up, then open JupyterLab on notebooks/ with the project's kernel"
	@echo "make bench     set up, then run the benchmarks"
	@echo "make assignments  set up, then build the course assignments into build/assignments/ (otter-grader)"
	@echo "make sweep SWEEP=sweeps/B_weight_decay.toml [EXECUTOR=dask]  set up, then run a sweep and write its tables"

# A local virtual environment from the pinned requirements (re-made when they change).
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP) data

# Fashion-MNIST: the Debian package where apt is available and we are root, otherwise torchvision's
# download into data/ (checksums are verified by nbutils.data either way).
data: $(STAMP)
	@if [ -d $(FMNIST_SYSTEM) ]; then echo "Fashion-MNIST: $(FMNIST_SYSTEM)"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) >/dev/null \
	  && echo "Fashion-MNIST: installed $(FMNIST_SYSTEM)"; \
	fi
	$(PY) -c "from nbutils.data import load_fashion_mnist as f; x = f(download=True); print('Fashion-MNIST verified:', x[0].shape, x[2].shape)"

figures: setup
	$(PY) -m nbutils run --profile $(PROFILE)

smoke: setup
	$(PY) -m nbutils run --profile smoke

test: setup
	$(PY) -m pytest

lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_ARGS)

assignments: setup
	$(PY) -m nbutils assign

SWEEP ?= sweeps/B_weight_decay.toml
EXECUTOR ?= sequential
sweep: setup
	$(PY) -m nbutils sweep $(SWEEP) --profile $(PROFILE) --executor $(EXECUTOR)

bench: setup
	$(PY) benchmarks/foundation.py
	$(PY) benchmarks/nrc_bench.py
	$(PY) benchmarks/sweep_bench.py

clean:
	rm -rf build figures/*.png figures/*.pdf figures/manifest.json
