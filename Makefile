# fetalcmr — the verbs of the compendium. `make help` lists them.
PROFILE ?= default
DATASET ?=
SEED ?= 0
SECTIONS ?=
FORCE ?=
REGENERATED ?=
INPUT ?= ../shared/real/thorax-atlas.nii.gz
KEEP_ORIENTATION ?=
CROP_AT_ORGANS ?=
ORGANS ?= $(if $(wildcard ../shared/real/thorax-atlas-organs.nii.gz),$(if $(filter ../shared/real/thorax-atlas.nii.gz,$(INPUT)),../shared/real/thorax-atlas-organs.nii.gz))
BUNDLE ?= data/runs/$(PROFILE)/models/bundle
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help reproduce report realcheck test lint lab bench verify mutation clean distclean env

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 12

env: $(STAMP)  ## create .venv with the pinned environment (pip), if missing or outdated

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet pip==26.3
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	@touch $(STAMP)

reproduce: $(STAMP)  ## run every notebook (PROFILE=smoke|default|paper DATASET=path/dataset.json FORCE=1)
	$(PY) -m fetalcmr.runner --profile $(PROFILE) --seed $(SEED) $(if $(DATASET),--dataset $(DATASET)) $(if $(FORCE),--force)

test: $(STAMP)  ## lint, then the test suite (includes every notebook at the smoke profile)
	$(VENV)/bin/ruff check fetalcmr tests
	$(VENV)/bin/pytest -q

lint: $(STAMP)  ## ruff only
	$(VENV)/bin/ruff check fetalcmr tests

report: $(STAMP)  ## offline HTML of the executed notebooks: data/runs/<run>/report/index.html (PROFILE, DATASET)
	$(PY) -m fetalcmr.site --profile $(PROFILE) $(if $(DATASET),--dataset $(DATASET))

lab: $(STAMP)  ## JupyterLab on the same environment (fetalcmr.render.view3d: plotly 3D offline, itkwidgets online)
	$(VENV)/bin/jupyter lab notebooks/

bench: $(STAMP)  ## benchmark the budgets named in the issues and print the figures (SECTIONS="smoke infer" picks some)
	$(PY) -m fetalcmr.bench $(SECTIONS)

realcheck: $(STAMP)  ## run the bundle on one real volume and measure (INPUT=path.nii.gz ORGANS=labels BUNDLE=folder KEEP_ORIENTATION=1 or CROP_AT_ORGANS=1)
	$(PY) -m fetalcmr.realcheck $(INPUT) $(BUNDLE) data/realcheck/$(notdir $(basename $(basename $(INPUT))))$(if $(KEEP_ORIENTATION),-kept-orientation)$(if $(CROP_AT_ORGANS),-organ-crop) $(if $(ORGANS),--organs $(ORGANS)) $(if $(KEEP_ORIENTATION),--keep-orientation) $(if $(CROP_AT_ORGANS),--crop-at-organs)

verify: $(STAMP)  ## regenerate PROFILE and compare tables (within measured spread) and claims (REGENERATED=dir skips the run)
	$(PY) -m fetalcmr.verify --profile $(PROFILE) --seed $(SEED) $(if $(REGENERATED),--regenerated $(REGENERATED))

mutation: $(STAMP)  ## mutation testing of the core modules, 35-80 min (MODULES="topology metrics" picks some; not in make test)
	$(PY) tests/mutation/mutate.py $(if $(MODULES),--modules $(MODULES))

clean:  ## remove generated data, executed notebooks and caches (keeps .venv and figures/)
	rm -rf data/runs .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +

distclean: clean  ## also remove the virtual environment
	rm -rf $(VENV)
