# Two jobs: `make book` (execute every chapter in the small profile, render _build/html)
# and `make test` (the test suite, smoke profile). `make help` lists the rest. Neither writes
# to tracked files: refreshing the committed records is an author step (`make records-small`,
# `make records-<part>`).
PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python)
JB ?= $(if $(wildcard .venv/bin/jupyter-book),.venv/bin/jupyter-book,jupyter-book)
# The staged data folder when it exists; otherwise TLUTILS_DATA_DIR stays unset and the chapters
# read the Hugging Face hub (see README, "Work offline").
DATA ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data))
ifneq ($(DATA),)
export TLUTILS_DATA_DIR ?= $(DATA)
endif
export TQDM_DISABLE ?= 1
export TLUTILS_PROGRESS ?= 0

.PHONY: help install book book-smoke records-small test test-fast sync bench times clean mathjax

# MathJax ships with the site (the npm registry's package, pinned), so formulas render offline.
MATHJAX_VERSION = 3.2.2
MATHJAX = _mathjax/mathjax/tex-mml-chtml.js

help:
	@echo "make install     install tlutils with the book and dev extras (pinned CPU torch)"
	@echo "make book        execute every chapter (small profile) and build _build/html"
	@echo "make book-smoke  the same in the smoke profile (about a minute)"
	@echo "make records-small  author step: make book, then keep every chapter's results as its small record"
	@echo "make records-P   record runs of part P (concepts, traditional): whole splits, 3 seeds, fp32"
	@echo "make test        unit tests + chapter tests (smoke profile)"
	@echo "make sync        regenerate the .ipynb twins from the .md chapters"
	@echo "make bench       fit vs transformers.Trainer on MRPC (about 15 minutes on 2 CPUs)"
	@echo "make times       wall time of each executed chapter"

install:
	$(PYTHON) -m pip install "torch==2.13.0" -e ".[book,dev]" -c constraints.txt

$(MATHJAX):
	@rm -rf _mathjax && mkdir -p _mathjax/npm
	cd _mathjax/npm && npm pack --silent mathjax@$(MATHJAX_VERSION) >/dev/null && tar xzf mathjax-$(MATHJAX_VERSION).tgz
	mv _mathjax/npm/package/es5 _mathjax/mathjax && rm -rf _mathjax/npm

mathjax: $(MATHJAX)

book: $(MATHJAX)
	@$(PYTHON) -m tlutils data >/dev/null  # one line and no build when a task has no data source
	TLUTILS_PROFILE=$${TLUTILS_PROFILE:-small} TLUTILS_RECORD_COMMAND="$${TLUTILS_RECORD_COMMAND:-make book}" \
	  $(JB) build . --all -W --keep-going
	@$(PYTHON) -m tlutils.results

# The author step behind the published book: the small-profile build, then each chapter's
# results file kept as benchmarks/results/chapters/<chapter>.small.json (commit them after).
records-small:
	TLUTILS_PROFILE=small TLUTILS_RECORD_COMMAND="make records-small" $(MAKE) book
	$(PYTHON) -m tlutils.results --keep

# make records-concepts, make records-traditional, ...: every chapter of one part in the record
# profile (whole splits, 3 seeds, fp32; <= 15 min a chapter, <= 90 min a part), kept as
# benchmarks/results/chapters/<chapter>.record.json. An author step: commit the records after.
records-%:
	@test -d book/$* || { echo "no part book/$*: use one of $$(cd book && ls -d */ | tr -d / | tr '\n' ' ')"; exit 1; }
	@mkdir -p outputs/record
	@failed=""; for md in $$(grep -l "save_results(" book/$*/*.md); do \
	  name=$$(basename $${md%.md}); echo "record run: $$name ($$(date +%T))"; \
	  TLUTILS_PROFILE=record TLUTILS_OUTPUT_DIR=$(CURDIR)/outputs/record TLUTILS_RECORD_COMMAND="make records-$*" \
	    $(PYTHON) -m papermill $${md%.md}.ipynb outputs/record/$$name.ipynb -p PROFILE record \
	    --cwd book/$* --no-progress-bar || failed="$$failed $$name"; \
	done; \
	$(PYTHON) -m tlutils.results --keep --root outputs/record; \
	test -z "$$failed" || { echo "record runs that failed:$$failed (see outputs/record/<chapter>.ipynb)"; exit 1; }

book-smoke:
	TLUTILS_PROFILE=smoke $(MAKE) book

test: $(MATHJAX)
	$(PYTHON) -m pytest

test-fast:
	$(PYTHON) -m pytest tests -m "not chapter"

sync:
	$(PYTHON) -m jupytext --sync $$(grep -l "^kernelspec:" book/*.md book/*/*.md)

bench:
	$(PYTHON) -m tlutils.bench

times:
	@$(PYTHON) -m tlutils.results

clean:
	rm -rf _build outputs _mathjax
