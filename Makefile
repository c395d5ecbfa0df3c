# `make demo` and `make test` work on a fresh clone: both set up .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# A CPU build of torch by default; GPU users pass their own, e.g. make install TORCH="torch==2.13.0+cu128"
TORCH  ?= torch==2.13.0
# What `make test` needs: pytest (dev), the joblib and submitit launchers (cluster), torchao (quant), transformers (peers: the LLaMA parameter check),
# MLflow, TensorBoard and W&B (tracking: the loggers read back with their own readers)
EXTRAS ?= dev,cluster,quant,peers,tracking
# bench-compare fails when a median is this much slower than the machine's last baseline
BENCH_FAIL ?= median:10%

.PHONY: install demo test test-slow bench bench-compare publish gpu-wheels clean

install: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

demo: install
	$(BIN)/harness study=demo

# One pytest worker per core, each on one thread: a worker waiting on a subprocess (most tests run the CLI) leaves
# its core to the other, and no worker's threads fight another's for a core (measured on 2 cores: serial ~1400 s,
# two workers on torch's default threads 903 s). --dist loadgroup: tests marked xdist_group share a module fixture
# and go to one worker, which runs it once (spread over both, each ran it).
PYTEST := OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n auto --dist loadgroup

test: install
	$(PYTEST) -m "not slow" tests

test-slow: install
	$(PYTEST) -m slow tests

bench: install
	$(BIN)/python -m pytest -q tests/bench --benchmark-only --benchmark-autosave

bench-compare: install
	$(BIN)/python -m pytest -q tests/bench --benchmark-only --benchmark-compare --benchmark-compare-fail=$(BENCH_FAIL)

# Copy a study's sweep records into results/STUDY and rebuild its report from them alone: make publish STUDY=demo
STUDY ?= demo
# The committed results are replaced only once the sweep's records are copied beside them.
publish: install
	@test -n "$$(find multirun/$(STUDY) -name record.json 2>/dev/null | head -n 1)" || \
	  { echo "publish: no records under multirun/$(STUDY) (run: harness study=$(STUDY)); results/$(STUDY) left as it is" >&2; exit 2; }
	rm -rf results/$(STUDY).new && mkdir -p results/$(STUDY).new
	cd multirun/$(STUDY) && find . -name record.json -exec cp --parents {} ../../results/$(STUDY).new/ \;
	rm -rf results/$(STUDY) && mv results/$(STUDY).new results/$(STUDY)
	$(BIN)/harness-report results/$(STUDY)

# The pure-Python wheels .ci/gpu-check installs where a GPU machine's image lacks Hydra and has no network: carry .whl/
gpu-wheels: install
	$(BIN)/python -m pip wheel --quiet --no-deps -w .whl hydra-core==1.3.2 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3

clean:
	rm -rf $(VENV) multirun outputs .pytest_cache .benchmarks
