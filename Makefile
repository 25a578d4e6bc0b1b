# Everything runs from one venv per clone (.venv), created and filled on first use.
VENV     ?= .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.installed
FMNIST   := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SPEC     ?= fmnist_quick
LAUNCHER ?= local
RUNS     ?= runs
SWEEP    ?= $(RUNS)/fmnist_quick
OUT      ?= $(SWEEP)/report
export OMP_NUM_THREADS ?= 2

.PHONY: install data browser test test-fast bench bench-peers sweep demo report fidelity-stats slurm-up slurm-down clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) data

# The embedded default dataset: Debian's Fashion-MNIST package, when we may install it.
data:
	@if [ ! -f $(FMNIST) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	fi
	@test -f $(FMNIST) || echo "note: Fashion-MNIST not found; install Debian's dataset-fashion-mnist or set FASHION_MNIST_PYTORCH"

# Headless Chromium for the HTML report's browser test (skipped where it is absent); best effort.
browser:
	@if ! command -v chromium >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "note: could not install chromium; the HTML report's browser test will be skipped"; \
	fi

test: install browser
	$(PY) -m pytest -q

test-fast: install browser
	$(PY) -m pytest -q -m "not slow and not slurm"

bench: install
	$(PY) -m bench.run_all

# The training step against the CPU sparse-training peers (SparseProp, SparseLab), installed in
# the venv without their dependencies (they would not replace torch; theirs are listed here).
# SparseProp's setup.py compiles with -march=native (so never from a cached wheel) against the
# pybind11 of whatever `python3` is on PATH: the venv's.
bench-peers: install
	$(PY) -m pip install --quiet pybind11 wheel 'setuptools>=59'
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m pip install --quiet --no-cache-dir --no-deps \
		--no-build-isolation sparseprop==0.1.14 sparselab==0.2.2
	$(PY) -m bench.sparse_backend step

# make sweep SPEC=mlp_dst [LAUNCHER=local|slurm|slurm_gpu|slurm_ddp] [ARGS="extra overrides"] [DRY=1] [DETACH=1]
sweep: install
	$(PY) -m src.launch -m +sweeps=$(SPEC) launcher=$(LAUNCHER) runs_root=$(RUNS) $(ARGS) $(if $(DRY),--dry-run) $(if $(DETACH),--detach)

# The main job: a small real comparison on Fashion-MNIST, then its tables and figures.
demo: install
	$(PY) -m src.launch -m +sweeps=fmnist_quick_dense runs_root=$(RUNS) $(ARGS)
	$(PY) -m src.launch -m +sweeps=fmnist_quick_static runs_root=$(RUNS) $(ARGS)
	$(PY) -m src.launch -m +sweeps=fmnist_quick runs_root=$(RUNS) $(ARGS)
	$(PY) -m analysis report $(RUNS)/fmnist_quick --out $(RUNS)/fmnist_quick/report
	@cat $(RUNS)/fmnist_quick/report/tables/accuracy.md $(RUNS)/fmnist_quick/report/tables/ranking.md
	@echo "run records: $(RUNS)/fmnist_quick   report: $(RUNS)/fmnist_quick/report/index.html"

# make report [SWEEP=runs/fmnist_quick] [OUT=dir]
report: install
	$(PY) -m analysis report $(SWEEP) --out $(OUT)

# Whole runs of the paper's code and of this project side by side, with Welch's tests
# (needs ../shared/reference; hours of CPU; resumable): make fidelity-stats [SEEDS=8] [JOBS=1]
fidelity-stats: install
	$(PY) scripts/fidelity_stats.py run --out $(RUNS)/fidelity --seeds $(or $(SEEDS),8) --jobs $(or $(JOBS),1)

# A real single-node SLURM cluster on loopback (Debian packages; needs root).
slurm-up:
	bash scripts/slurm/start.sh

slurm-down:
	bash scripts/slurm/stop.sh

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis bench/results
