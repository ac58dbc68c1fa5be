# Two commands for a fresh machine: `make run` (the main job) and `make test` (the suite).
VENV := .venv
PY := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 2
export OMP_WAIT_POLICY ?= PASSIVE

# What the suite reads besides Python packages: Fashion-MNIST (real data) and headless
# Chromium (the report rendering test), from Debian.
SYSTEM_PACKAGES := dataset-fashion-mnist chromium

.PHONY: run test install install-test system clean

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

run: install
	$(PY) -m effscale study --out runs/study

system:
	@if [ -d /usr/share/datasets/fashion-mnist ] && command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; apt-get update -q >/dev/null || true; \
	  apt-get install -y -q --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; \
	else echo "make test: the Fashion-MNIST and Chromium tests need Debian's $(SYSTEM_PACKAGES): sudo apt-get install $(SYSTEM_PACKAGES)"; fi

test: install-test system
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs
