# Two jobs: `make book` (execute every chapter in the small profile, render _build/html)
# and `make test` (the test suite, smoke profile). `make help` lists the rest.
PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python)
JB ?= $(if $(wildcard .venv/bin/jupyter-book),.venv/bin/jupyter-book,jupyter-book)
DATA ?= $(abspath ../shared/data)
export TLUTILS_DATA_DIR ?= $(DATA)
export TQDM_DISABLE ?= 1
export TLUTILS_PROGRESS ?= 0

.PHONY: help install book book-smoke test test-fast sync bench times clean

help:
	@echo "make install     install tlutils with the book and dev extras (pinned CPU torch)"
	@echo "make book        execute every chapter (small profile), build _build/html, keep the records"
	@echo "make book-smoke  the same in the smoke profile (about a minute)"
	@echo "make test        unit tests + chapter tests (smoke profile)"
	@echo "make sync        regenerate the .ipynb twins from the .md chapters"
	@echo "make bench       fit vs transformers.Trainer on MRPC (about 15 minutes on 2 CPUs)"
	@echo "make times       wall time of each executed chapter"

install:
	$(PYTHON) -m pip install "torch==2.13.0" -e ".[book,dev]" -c constraints.txt

book:
	TLUTILS_PROFILE=$${TLUTILS_PROFILE:-small} $(JB) build . --all -W --keep-going
	@$(PYTHON) -m tlutils.results --keep

book-smoke:
	TLUTILS_PROFILE=smoke $(MAKE) book

test:
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
	rm -rf _build outputs
