# The two commands of the README: `make demo` (HEADLESS=1 for a screenshot + report) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HEADLESS ?=
XVFB := xvfb-run -a -s "-screen 0 1600x1000x24"
# Debian packages napari needs to draw under a virtual X server (Qt xcb plugin, Mesa's software OpenGL).
DEB_PKGS := xvfb xauth libgl1-mesa-dri libegl1 libglx-mesa0 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 \
	libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 \
	libxcb-cursor0 libdbus-1-3 libfontconfig1
SOURCES := $(shell find napari_lidnet -type f -not -path '*/__pycache__/*') napari.yaml setup.cfg pyproject.toml

.PHONY: demo test lint bench xvfb install clean

# Dependencies (slow, once): CPU torch pinned first so no CUDA build is pulled, then the plugin's requirements.
$(VENV)/.deps: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q ".[pyqt6,testing]"
	touch $@

# The plugin itself, a plain (non-editable) install, redone whenever a source file changes.
$(VENV)/.plugin: $(VENV)/.deps $(SOURCES)
	$(PY) -m pip install -q --no-deps --force-reinstall .
	touch $@

install: $(VENV)/.plugin

xvfb:
	@dpkg -s $(DEB_PKGS) >/dev/null 2>&1 || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(DEB_PKGS); }

demo: install $(if $(HEADLESS),xvfb)
ifeq ($(HEADLESS),)
	$(PY) -m napari_lidnet.demo
else
	$(XVFB) $(PY) -m napari_lidnet.demo --headless --out demo-out
endif

test: install xvfb
	$(XVFB) $(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check napari_lidnet tests benchmarks

bench: install
	$(PY) benchmarks/speed.py
	$(PY) benchmarks/sim_speed.py

clean:
	rm -rf $(VENV) build *.egg-info demo-out demo-out-*
