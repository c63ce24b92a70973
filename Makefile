# xen2kvm.migration -- build and test entry points.  `make help` lists the targets.
#
# Every target that needs tools first runs scripts/install-deps.sh (Debian packages + .venv);
# it takes well under a second when everything is there.  `make test` runs, in order and stopping
# at the first failure: unit, lanes (integration in two lanes at once, Molecule in the second:
# scripts/lanes.sh), sanity, lint.

SHELL        := /bin/bash
.SHELLFLAGS  := -eu -o pipefail -c
.DEFAULT_GOAL := help

REPO    := $(CURDIR)
VENV    ?= $(REPO)/.venv
BIN     := $(VENV)/bin
PYTEST_ARGS ?=
SANITY_ARGS ?=
LINT_ARGS   ?=

# Tools of the venv first (ansible-lint warns otherwise). ansible-playbook and ansible-lint find
# the collection through the same build/collections symlink that tests/conftest.py makes
# (ansible-lint runs offline, so it does not install the collection by itself).
export PATH := $(BIN):$(PATH)
export ANSIBLE_COLLECTIONS_PATH := $(REPO)/build/collections
export DEBIAN_FRONTEND := noninteractive
export VENV

# `make test` runs install once, then the steps with SKIP_INSTALL=1.
INSTALL := $(if $(SKIP_INSTALL),,install)

# pytest on one directory; exit 5 (no tests collected) is fine while that directory is still empty.
define pytest_dir
	@echo "==> pytest $(1)"
	@rc=0; $(BIN)/pytest $(1) $(PYTEST_ARGS) || rc=$$?; \
	if [[ $$rc -eq 5 ]]; then echo "(no tests collected in $(1); not a failure)"; rc=0; fi; \
	exit $$rc
endef

.PHONY: help install test test-all unit integration lanes integration-lane1 integration-lane2 molecule sanity lint demo bench build changelog clean distclean collection-link

help:
	@echo "make demo         build a sample Xen VM, migrate it into local libvirt, show it booting"
	@echo "make test         install deps, then unit + integration + molecule + sanity + lint (stops at first failure);"
	@echo "                  integration boots one test guest per code path, in two lanes at once (scripts/lanes.sh)"
	@echo "make test-all     the same, booting every test guest variant"
	@echo "make install      Debian packages + .venv (idempotent; scripts/install-deps.sh)"
	@echo "make unit         pytest tests/unit            (PYTEST_ARGS=...)"
	@echo "make integration  pytest tests/integration     (root; starts libvirtd itself)"
	@echo "make molecule     molecule test -s default, -s fleet, then -s live-export (extensions/molecule; root, libvirtd)"
	@echo "make sanity       ansible-test sanity on a clean copy (SANITY_ARGS='--test pylint')"
	@echo "make lint         ansible-lint --profile production (LINT_ARGS=...)"
	@echo "make bench        bench/xva_bench.py, live_export_bench.py, migrate_bench.py (BENCH=xva|live|migrate: one)"
	@echo "make bench BENCH=xva PROFILE=1  also where each conversion's time goes (reading, decompressing, hashing, writing, syncing)"
	@echo "make bench BENCH=fixup  bench/fixup_compare.py: guest_fixup vs virt-v2v per test guest (root; boots qemu)"
	@echo "make build        the collection artifact build/xen2kvm-migration-VERSION.tar.gz"
	@echo "make changelog    release notes: changelogs/fragments -> changelog.yaml + CHANGELOG.md"
	@echo "make clean        remove build/, test output and caches (keeps .venv)"
	@echo "make distclean    clean + remove .venv"

install:
	@$(REPO)/scripts/install-deps.sh

test: install
	@start=$$(date +%s); \
	LANE1_FIRST="unit sanity lint" $(MAKE) --no-print-directory SKIP_INSTALL=1 lanes && \
	echo "==> make test: all steps passed in $$(( $$(date +%s) - start ))s"

unit: $(INSTALL)
	$(call pytest_dir,tests/unit)

# make test boots one guest per code path; make test-all (or ALL_VARIANTS=1) boots every variant.
INTEGRATION_SELECT := $(if $(ALL_VARIANTS),,-m "not all_variants")

integration: $(INSTALL)
	$(call pytest_dir,tests/integration $(INTEGRATION_SELECT))

# make test runs the integration tests in two lanes at once, Molecule after lane 2 (scripts/lanes.sh).
LANE_SELECT := $(if $(ALL_VARIANTS),,not all_variants and )

lanes: $(INSTALL)
	@$(REPO)/scripts/lanes.sh

integration-lane1: $(INSTALL)
	$(call pytest_dir,tests/integration -m "$(LANE_SELECT)not second_lane")

integration-lane2: $(INSTALL)
	$(call pytest_dir,tests/integration -m "$(LANE_SELECT)second_lane")

test-all:
	@$(MAKE) --no-print-directory ALL_VARIANTS=1 test

# The scenarios of extensions/molecule migrate NAUBackup-style exports into this machine's libvirt
# (domain type qemu) with playbooks/migrate.yml; their create step builds the exports with
# tests/lib/guest_factory.py, their destroy step removes everything again.
molecule: $(INSTALL) collection-link
	@$(REPO)/scripts/libvirtd-up.sh
	@cd $(REPO) && for scenario in default fleet live-export; do \
	  echo "==> molecule test -s $$scenario"; \
	  $(BIN)/molecule test -s $$scenario; \
	done

sanity: $(INSTALL)
	@echo "==> ansible-test sanity"
	@$(REPO)/scripts/sanity.sh $(SANITY_ARGS)

lint: $(INSTALL) collection-link
	@echo "==> ansible-lint --profile production"
	@cd $(REPO) && $(BIN)/ansible-lint --profile production $(LINT_ARGS)

collection-link:
	@mkdir -p $(REPO)/build/collections/ansible_collections/xen2kvm
	@ln -sfn $(REPO) $(REPO)/build/collections/ansible_collections/xen2kvm/migration

demo: $(INSTALL) collection-link
	@if [[ -f $(REPO)/playbooks/demo.yml ]]; then \
	  cd $(REPO) && $(BIN)/ansible-playbook playbooks/demo.yml; \
	else \
	  echo "make demo: not yet available (playbooks/demo.yml does not exist yet)" >&2; exit 1; \
	fi

# BENCH=xva: xva_convert against its anchors; BENCH=live: an export through the XAPI double
# against the same XVA from a file; BENCH=migrate: migrate.yml end to end (root,
# libvirtd, boots qemu for minutes); BENCH=all (default) runs both.
BENCH ?= all
bench: $(INSTALL) collection-link
	@case "$(BENCH)" in all|xva|live|migrate|fixup) ;; *) echo "make bench: BENCH=all|xva|live|migrate|fixup, not '$(BENCH)'" >&2; exit 2;; esac
	@if [[ "$(BENCH)" == all || "$(BENCH)" == xva ]]; then $(BIN)/python $(REPO)/bench/xva_bench.py $(if $(filter 1 yes true,$(PROFILE)),--profile); fi
	@if [[ "$(BENCH)" == all || "$(BENCH)" == live ]]; then $(BIN)/python $(REPO)/bench/live_export_bench.py; fi
	@if [[ "$(BENCH)" == all || "$(BENCH)" == migrate ]]; then $(BIN)/python $(REPO)/bench/migrate_bench.py; fi
	@if [[ "$(BENCH)" == fixup ]]; then $(BIN)/python $(REPO)/bench/fixup_compare.py; fi

# The artifact users install (galaxy.yml's build_ignore keeps the checkout's tooling out).
build: $(INSTALL)
	@$(BIN)/ansible-galaxy collection build --force --output-path $(REPO)/build $(REPO)

# At a release, after setting galaxy.yml's version: the fragments become the release's notes.
changelog: $(INSTALL)
	@cd $(REPO) && $(BIN)/antsibull-changelog lint && $(BIN)/antsibull-changelog release

clean:
	rm -rf $(REPO)/build $(REPO)/tests/output $(REPO)/.pytest_cache $(REPO)/.hypothesis $(REPO)/bench/out
	find $(REPO) -path $(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -f $(REPO)/xen2kvm-migration-*.tar.gz

distclean: clean
	rm -rf $(VENV)
