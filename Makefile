# Two commands do all set-up on a fresh machine:
#   make demo   - trains a Flash-GRPO LoRA on the shipped toy Wan model on CPU (workflows/demo.json)
#   make test   - lints (ruff) and runs the test suite
# Both create .venv and install what they need. torch is not in requirements.txt (ComfyUI brings its
# own), so it is installed first: the CPU build ($(TORCH_CPU)) on a machine without an NVIDIA GPU,
# pip's default (CUDA) build ($(TORCH_CUDA)) on a CUDA machine; an importable torch is kept.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH_CPU ?= torch==2.13.0
TORCH_CUDA ?= torch>=2.4

.PHONY: setup demo test bench bench-alignment gpu-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if $(PY) -c "import torch" 2>/dev/null; then \
		true; \
	elif command -v nvidia-smi >/dev/null 2>&1; then \
		echo "NVIDIA GPU: installing torch ($(TORCH_CUDA))"; \
		$(PY) -m pip install -q "$(TORCH_CUDA)"; \
	else \
		echo "no NVIDIA GPU: installing the CPU build of torch ($(TORCH_CPU))"; \
		$(PY) -m pip install -q "$(TORCH_CPU)"; \
	fi
	$(PY) -m pip install -q -r requirements.txt "pytest>=8" "rapidocr-onnxruntime>=1.3" "ruff>=0.6"
	touch $@

demo: setup
	$(PY) -m trainer.run workflows/demo.json

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q

bench: setup
	$(PY) -m bench.iteration

bench-alignment: setup
	$(PY) -m bench.alignment

# one H100/H200, under 8 minutes: seconds and peak memory per rollout step, update and VAE decode
gpu-check: setup
	$(PY) -m bench.gpu_check --json bench/out/gpu_check.json

clean:
	rm -rf $(VENV) runs bench/out
