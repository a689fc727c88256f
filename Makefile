# The two commands of the README:
#   make quickstart   set up .venv and specialize the bundled SmolLM2-135M on `arith` (lorasp fit)
#   make test         set up .venv and run the whole test suite
.PHONY: setup quickstart test
VENV ?= .venv

setup:
	bash scripts/setup.sh

quickstart: setup
	$(VENV)/bin/lorasp fit

test: setup
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider --timeout 900 --durations 15
