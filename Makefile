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

.PHONY: install kernels data browser lint test test-fast bench bench-peers sweep demo study report fidelity-stats slurm-up slurm-down clean

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) kernels data

# The sparse backend's compiled kernels (src/sparse/sparse_kernels.cpp), built with the C++
# compiler here into ~/.cache/fantastic-dst (keyed by source, flags and CPU). Without a compiler
# this prints why and the backend runs torch's kernels; DST_NO_EXT=1 chooses those anyway.
kernels: $(STAMP)
	@$(PY) -m src.sparse.kernels

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

# The habits: one format, lint-clean, and types checked (pyproject.toml configures all three).
LINTED := src analysis hydra_plugins
lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINTED) tests bench scripts
	$(VENV)/bin/ruff format --check $(LINTED) tests bench scripts
	$(PY) -m mypy $(LINTED)

test: install browser lint
	$(PY) -m pytest -q

test-fast: install browser lint
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

# The main job: a small real comparison on Fashion-MNIST (27 runs, 3 seeds per cell), then its
# tables and figures; it ends with the accuracies, the paper's claims checked on them and Fig. 1.
DEMO_REPORT := $(RUNS)/fmnist_quick/report
demo: install
	$(PY) -m src.launch -m +sweeps=fmnist_quick_dense runs_root=$(RUNS) $(ARGS)
	$(PY) -m src.launch -m +sweeps=fmnist_quick_static runs_root=$(RUNS) $(ARGS)
	$(PY) -m src.launch -m +sweeps=fmnist_quick runs_root=$(RUNS) $(ARGS)
	$(PY) -m analysis report $(RUNS)/fmnist_quick --out $(DEMO_REPORT) > $(DEMO_REPORT).log
	@echo; cat $(DEMO_REPORT)/tables/accuracy.md
	@echo; echo "The paper's claims on these runs (evidence and tests: $(DEMO_REPORT)/tables/claims.md):"
	@awk -F' [|] ' 'NR > 4 && /^[|]/ { sub(/^[|] /, "", $$1); print "  " $$1 ", " $$2 " growth: " $$3 ": " $$4 }' \
		$(DEMO_REPORT)/tables/claims.md
	@echo; echo "Fig. 1: $(DEMO_REPORT)/figures/fig1_accuracy_vs_density__lenet5_fashion_mnist.png"
	@echo "report: $(DEMO_REPORT)/index.html   run records: $(RUNS)/fmnist_quick"

# The study (results/fmnist_fig1/, see its README): the paper's Fig. 1 grid on Fashion-MNIST at
# 10 epochs, 168 LeNet-5 runs. Through SLURM in packed jobs when a cluster answers (`make
# slurm-up` as root starts the local one), on this machine otherwise. Resumable: run it again
# after an interruption and it finishes what is missing; then the record is rewritten.
# STUDY_LAUNCHER=local keeps it on this machine even when a cluster answers.
# make study [STUDY=fmnist_fig1] [STUDY_OUT=results/fmnist_fig1] [STUDY_LAUNCHER=auto|local|slurm] [ARGS="extra overrides"]
STUDY ?= fmnist_fig1
STUDY_OUT ?= results/$(STUDY)
STUDY_LAUNCHER ?= auto
LOCAL_SLURM_CONF := /tmp/dst-slurm/etc/slurm.conf
study: install
	@case "$(STUDY_LAUNCHER)" in auto|local|slurm) ;; \
		*) echo "STUDY_LAUNCHER=$(STUDY_LAUNCHER): allowed values are auto, local, slurm" >&2; exit 2;; esac; \
	export SLURM_CONF=$${SLURM_CONF:-$$(test -f $(LOCAL_SLURM_CONF) && echo $(LOCAL_SLURM_CONF))}; \
	if [ "$(STUDY_LAUNCHER)" != local ] && partition=$$(sinfo -h -o %P 2>/dev/null | tr -d '*' | head -1) \
		&& [ -n "$$partition" ]; then \
		cpus=$$(sinfo -h -o %c | head -1); \
		launcher="launcher=slurm hydra.launcher.partition=$$partition hydra.launcher.cpus_per_task=$$cpus \
			hydra.launcher.concurrent_runs=$$cpus hydra.launcher.runs_per_job=12 hydra.launcher.timeout_min=120"; \
	elif [ "$(STUDY_LAUNCHER)" = slurm ]; then echo "STUDY_LAUNCHER=slurm: no SLURM partition answers (sinfo)" >&2; exit 2; \
	else launcher="launcher=local"; fi; \
	echo "study $(STUDY): $$launcher"; status=0; \
	for sweep in $(STUDY)_dense $(STUDY)_static $(STUDY); do \
		$(PY) -m src.launch -m +sweeps=$$sweep runs_root=$(RUNS) $$launcher $(ARGS) || status=$$?; \
	done; \
	$(PY) scripts/study_record.py $(RUNS)/$(STUDY) --out $(STUDY_OUT) || status=$$?; \
	exit $$status

# make report [SWEEP=runs/fmnist_quick] [OUT=dir]
report: $(STAMP)  # (reads records only: no kernels, no dataset)
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
