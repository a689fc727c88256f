# The two commands of the README:
#   make quickstart   set up .venv and specialize the bundled SmolLM2-135M on `arith` (lorasp fit)
#   make test         set up .venv and run the whole test suite
#   make readme-api   run the README's Python API block verbatim (real SmolLM2; CI runs it after the tests)
#   make reference    regenerate docs/reference/cli.md, config.md, artifact.md from the code
#   make docs         build the docs site into site/ (mkdocs build --strict: a broken link or missing page fails)
.PHONY: setup quickstart test readme-api reference docs
VENV ?= .venv
# make test: pytest-xdist workers (each computes with cores / workers threads, tests/conftest.py); a test
# file's tests run on one worker, so a module's fixtures are built once
TEST_WORKERS ?= 2
# the real data sets (layout of shared/data) for the held-out OOD/BBH curves; without them those sets are skipped
DATA_DIR ?= $(if $(LORASP_DATA_DIR),$(LORASP_DATA_DIR),$(wildcard $(abspath ../shared/data)))

setup:
	bash scripts/setup.sh

quickstart: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 LORASP_DATA_DIR="$(DATA_DIR)" $(VENV)/bin/lorasp fit --overwrite

test: setup
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider --timeout 900 --durations 15 -n $(TEST_WORKERS) --dist loadfile

readme-api: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/python scripts/readme_api.py

reference:
	$(VENV)/bin/python scripts/gen_reference.py

docs: setup
	$(VENV)/bin/python scripts/gen_reference.py --check
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict
