# The README's commands: `make test` (everything CI runs) and `make demo`.
# Everything installs itself: a pinned virtualenv in .venv, Debian packages via
# apt when they are missing, and the lab's binaries built from Go modules into
# a cache outside the repository (lab/build-binaries.sh).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
COLLECTIONS := $(VENV)/collections
COLLECTION_LINK := $(COLLECTIONS)/ansible_collections/kubecrypt/at_rest
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/$(COLLECTIONS)
export ANSIBLE_COLLECTIONS_SCAN_SYS_PATH := false
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

DEBIAN_PACKAGES := haproxy util-linux

.PHONY: help test unit sanity lab-test demo lab-up lab-down lab-status deps venv binaries clean

help:
	@echo "make test       everything CI runs (unit, sanity, lab tests)"
	@echo "make demo       bring up the lab and show the collection at work"
	@echo "make lab-up     start the local HA control plane (.lab/)"
	@echo "make lab-down   stop it and remove .lab/"
	@echo "make lab-status show what runs"

$(VENV)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

$(COLLECTION_LINK):
	mkdir -p $(dir $@)
	ln -sfn $(CURDIR) $@

venv: $(VENV)/.installed $(COLLECTION_LINK)

# Debian packages the lab needs; installed only when missing.
deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

binaries:
	bash lab/build-binaries.sh >/dev/null

lab-up: venv deps binaries
	$(VPY) lab/lab.py up

lab-down: venv
	$(VPY) lab/lab.py down

lab-status: venv
	$(VPY) lab/lab.py status

unit: venv
	$(VPY) -m pytest -q tests/unit

clean: lab-down
	rm -rf $(VENV)
