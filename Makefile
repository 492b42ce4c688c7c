# Two commands do all set-up on a fresh machine (see README.md):
#   make run    install into .venv, then run the main job on the embedded defaults
#   make test   install into .venv, then run the test suite (what .ci/run calls)
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install run test lint clean

install: $(VENV)/.installed

# constraints.txt pins the exact tested set; pyproject.toml holds the ranges.
$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

run: install
	$(VENV)/bin/codeparrot run

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
