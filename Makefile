# `make test` and `make serve` do all set-up on a fresh machine: virtualenv, torch from this machine's
# disk (pip, not uv/poetry), the project in editable mode, and Debian's Fashion-MNIST when apt is there.
PYTHON ?= python3
VENV   ?= .venv
PORT   ?= 3000
# `make serve` listens on this machine only; `make serve HOST=0.0.0.0` exposes it (docs/http-api.md)
HOST   ?= 127.0.0.1
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ganforge-installed
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: test test-slow serve install fashion-mnist clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

fashion-mnist:
	@if [ ! -d $(FMNIST) ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	    (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null) || \
	    echo "warning: could not install dataset-fashion-mnist; tests that need it will be skipped"; \
	  else echo "warning: no apt-get; tests that need Fashion-MNIST will be skipped"; fi; \
	fi

test: $(STAMP) fashion-mnist
	$(PY) -m pytest -q -p no:cacheprovider

test-slow: $(STAMP) fashion-mnist
	$(PY) -m pytest -q -p no:cacheprovider -m slow

# The bundled checkpoints present in this checkout; `make serve SERVED="a b"` serves other store models.
BUNDLED := fashion_mnist_cgan fashion_mnist_edges2image
SERVED  ?= $(foreach m,$(BUNDLED),$(if $(wildcard checkpoints/$(m)/model.safetensors),$(m)))
comma   := ,
space   := $(subst ,, )

# Export is idempotent (skipped when the store already holds the same weights), so it runs every time.
serve: $(STAMP)
	@test -n "$(strip $(SERVED))" || { echo "no model to serve: no checkpoints/{$(subst $(space),$(comma),$(BUNDLED))}/model.safetensors"; exit 1; }
	@for m in $(SERVED); do \
	  if [ -f checkpoints/$$m/model.safetensors ]; then $(VENV)/bin/ganforge export checkpoints/$$m --name $$m || exit 1; fi; \
	done
	BENTOML_DO_NOT_TRACK=True GANFORGE_MODELS=$(subst $(space),$(comma),$(strip $(SERVED))) \
	  $(VENV)/bin/bentoml serve service.service:Generator --host $(HOST) --port $(PORT)

clean:
	rm -rf $(VENV) runs .pytest_cache
