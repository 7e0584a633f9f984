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

DEBIAN_PACKAGES := haproxy util-linux shellcheck

.PHONY: help test test-long unit sanity lint demo lab-up lab-down lab-status deps venv binaries clean

help:
	@echo "make test       everything CI runs (unit, sanity, lint, lab tests, molecule)"
	@echo "make test-long  the long lab tests (SIGKILL resumability, rotation under traffic)"
	@echo "make demo       bring up the lab and show the collection at work"
	@echo "make lab-up     start the local HA control plane (.lab/)"
	@echo "make lab-down   stop it and remove .lab/"
	@echo "make lab-status show what runs"
	@echo "make sanity     ansible-test sanity;  make lint  ansible-lint (production profile)"

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

demo: lab-up
	$(VPY) lab/demo.py

lab-down: venv
	$(VPY) lab/lab.py down

lab-status: venv
	$(VPY) lab/lab.py status

unit: venv
	$(VPY) -m pytest -q tests/unit

# ansible-test wants the collection at .../ansible_collections/NS/NAME; it is
# run on a copy of the files git knows about, in a scratch directory of its own
# outside this work tree (inside it, ansible-test would ask git, which ignores
# the copy).
# It gets a virtualenv of its own (its requirements pin other versions), and
# each of its per-test venvs is bootstrapped by tests/sanity/bootstrap_pip.py
# instead of a get-pip.py download from outside the package registries.
CACHE_HOME ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)
SANITY_VENV := .cache/sanity-venv
ANSIBLE_TEST_PIP_VERSION := 24.2
ANSIBLE_TEST_GET_PIP := $(HOME)/.ansible/test/cache/get_pip_$(subst .,_,$(ANSIBLE_TEST_PIP_VERSION)).py

$(SANITY_VENV)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(SANITY_VENV)
	$(SANITY_VENV)/bin/pip install --quiet --disable-pip-version-check $$(grep '^ansible-core==' requirements-dev.txt)
	touch $@

sanity: $(SANITY_VENV)/.installed deps
	mkdir -p $(dir $(ANSIBLE_TEST_GET_PIP)) $(CACHE_HOME)/kubecrypt-at_rest
	cmp -s tests/sanity/bootstrap_pip.py $(ANSIBLE_TEST_GET_PIP) || cp tests/sanity/bootstrap_pip.py $(ANSIBLE_TEST_GET_PIP)
	scratch=$$(mktemp -d $(CACHE_HOME)/kubecrypt-at_rest/sanity.XXXXXX); \
	root=$$scratch/ansible_collections/kubecrypt/at_rest; mkdir -p $$root; \
	git ls-files -co --exclude-standard -z | tar --null -T - -cf - | tar -xf - -C $$root; \
	status=0; (cd $$root && $(CURDIR)/$(SANITY_VENV)/bin/ansible-test sanity --local --requirements --python 3.11 --color no) || status=$$?; \
	rm -rf $$scratch; exit $$status

lint: venv
	$(VENV)/bin/ansible-lint --offline

# Everything CI runs.  The pytest summary is the last thing printed; the lab is
# removed at the end of the session when this run started it.
test: venv deps binaries sanity lint
	@if $(VPY) lab/lab.py status >/dev/null 2>&1; then echo "using the running lab"; teardown=0; else teardown=1; fi; \
	$(VPY) lab/lab.py up; \
	KUBECRYPT_LAB_TEARDOWN=$$teardown $(VPY) -m pytest -p no:cacheprovider --durations=15 -m "not long" tests/unit tests/integration

# The long lab tests (tests/conftest.py names them): enable with every provider
# on fresh labs, aescbc to KMS v2, a node down mid-rotation, rotate timed in both
# modes, the rotate playbook SIGKILLed at many points and resumed, and a rotation
# under continuous traffic.  Each test prints its figures (-s).
test-long: venv deps binaries
	@if $(VPY) lab/lab.py status >/dev/null 2>&1; then echo "using the running lab"; teardown=0; else teardown=1; fi; \
	$(VPY) lab/lab.py up; \
	KUBECRYPT_LAB_TEARDOWN=$$teardown $(VPY) -m pytest -p no:cacheprovider --durations=0 -s -m long tests/integration

clean: lab-down
	rm -rf $(VENV)
