# qdeploy: the two commands a new user needs are `make target=fpga build` and `make test`.
# The first call creates .venv from requirements.lock (nothing to install by hand).

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
target  ?= fpga
recipe  ?=
RECIPE  := $(if $(recipe),--recipe $(recipe),)
QDEPLOY := $(PY) -m qdeploy
STAMP   := $(VENV)/.installed

.PHONY: setup train export build parity report bench sweep predict readme-results test test-slow clean lock help

help:
	@echo "make target=fpga|npu|gpu build   build a target on the embedded default (or recipe=recipes/X.yaml)"
	@echo "make train | export | parity | bench | test | test-slow | clean | setup | lock"
	@echo "make sweep recipe=recipes/X.yaml [seeds=\"0 1 2\"] [isa=native|avx2] [jobs=2]   mean and spread over seeds"
	@echo "make predict target=fpga|npu|gpu|qat|float images=DIR   run a deployed model on images"
	@echo "make readme-results   regenerate the README's results tables from report.json / bench.json"

setup: $(STAMP)

# requirements.lock is a full freeze, installed without resolution (--no-deps): see README
# "Environment" for the one override (brevitas 0.13.4 over finn-plus's brevitas==0.13.0 pin).
$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=25"
	$(PY) -m pip install --quiet --no-deps -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -c "import torch, brevitas, qonnx, finn, nncf, openvino, onnxruntime; print('environment ready: torch', torch.__version__, 'brevitas', brevitas.__version__)"
	touch $(STAMP)

train: $(STAMP)
	$(QDEPLOY) train $(RECIPE)

export: $(STAMP)
	$(QDEPLOY) export $(RECIPE)

build: $(STAMP)
	$(QDEPLOY) build --target $(target) $(RECIPE)

parity: $(STAMP)
	$(QDEPLOY) parity $(RECIPE)

report: $(STAMP)
	$(QDEPLOY) report $(RECIPE)

bench: $(STAMP)
	$(QDEPLOY) bench $(RECIPE)

# make sweep recipe=recipes/neu.yaml [seeds="0 1 2"] [isa=avx2] [jobs=2]: mean and spread over seeds
seeds   ?= 0 1 2
isa     ?= native
jobs    ?= 1
sweep: $(STAMP)
	$(QDEPLOY) sweep $(RECIPE) --seeds $(seeds) --isa $(isa) --jobs $(jobs)

# make predict target=fpga images=path/to/folder [out=DIR]
images  ?=
out     ?=
predict: $(STAMP)
	@test -n "$(images)" || { echo "make predict: give images=FILE_OR_DIR (e.g. images=build/_data/...)"; exit 2; }
	$(QDEPLOY) predict --target $(target) $(RECIPE) $(if $(out),--out $(out),) $(images)

# Two processes: the end-to-end builds (tests/test_pipeline.py) run last in a fresh one, so the
# hundreds of library tests before them leave no native state (OpenVINO, NNCF, FINN) behind
# for them, nor they for anything after: a pytest process holding both died with SIGSEGV.
# README tables from build/<recipe>/report/report.json + bench/bench.json (run parity and bench first)
readme-results: $(STAMP)
	$(PY) tools/readme_results.py --build build/$(or $(basename $(notdir $(recipe))),default)

test: $(STAMP)
	$(PY) -m pytest -m "not slow and not bench" -q --durations=15 --ignore=tests/test_pipeline.py --ignore=tests/test_segdec_pipeline.py
	$(PY) -m pytest -m "not slow and not bench" -q --durations=5 tests/test_pipeline.py tests/test_segdec_pipeline.py

test-slow: $(STAMP)
	$(PY) -m pytest -m "slow" -q --durations=15

# Regenerate the lock from requirements/top.txt in a scratch env (needs the registries).
lock:
	rm -rf /tmp/qdeploy-lock && $(PYTHON) -m venv /tmp/qdeploy-lock
	/tmp/qdeploy-lock/bin/pip install --quiet -r requirements/top.txt
	/tmp/qdeploy-lock/bin/pip install --quiet --no-deps finn-plus==1.6.1
	(head -2 requirements.lock; /tmp/qdeploy-lock/bin/pip freeze --all | grep -vE "^(-e|pip==|wheel==)" | sed 's/+cpu$$//') > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf build FINN_TMP .benchmarks
