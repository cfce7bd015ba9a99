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

demo: setup
	$(BIN)/mlcpatch archs
	$(BIN)/mlcpatch patch $(ARCH) --source builtin --diff

serve: setup
	@echo "mlcpatch serve arrives with the WebGPU engine (issue: WebGPU builds)"; exit 2

bench: setup
	@echo "benchmarks arrive with the compiler backend"; exit 2

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
