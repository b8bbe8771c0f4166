# Two commands for a fresh machine with Python >= 3.10 and pip:
#   make test   creates .venv, installs the pinned CPU environment, runs the tests
#   make demo   same set-up, runs the main job (python -m entmaxkv.demo)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo fidelity clean

$(STAMP): pyproject.toml requirements-ci.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-ci.txt
	$(PY) -m pip install --quiet -c requirements-ci.txt -e ".[test,diagnostics]"
	touch $(STAMP)

# Without a GPU, Triton kernels run in its interpreter (set before any kernel is defined).
test: $(STAMP)
	TRITON_INTERPRET=$${TRITON_INTERPRET:-$$($(PY) -c 'import torch; print(0 if torch.cuda.is_available() else 1)')} \
		$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m entmaxkv.demo

fidelity: $(STAMP)
	$(PY) benchmarks/fidelity.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
