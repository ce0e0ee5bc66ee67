# The course's commands. `make test` and `make check` create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch. On Linux, PyPI's default torch is a multi-GB CUDA build; to get the
# small CPU wheel from PyTorch's own index use:
#   make test TORCH_INSTALL="torch --index-url https://download.pytorch.org/whl/cpu"
TORCH_INSTALL ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup distill test check notebooks lint bench bench-export slides site site-check clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements-teacher.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install $(TORCH_INSTALL)
	$(BIN)/python -m pip install -e ".[dev]"
	$(BIN)/python -m pip install --no-deps -r requirements-teacher.txt
	touch $@

# The main job on the built-in default: fine-tune the teacher, distil a 3-layer DistilBERT on
# SST-2, write runs/distill/{results.json,report.md,results.png,student/}. Options: ARGS="--preset fast".
distill: setup
	$(BIN)/python -m kd_lib distill $(ARGS)

# Teacher vs student speed and online vs cached-logit distillation steps, side by side.
bench: setup
	$(BIN)/python benchmarks/bench.py $(ARGS)

# The shipped student: PyTorch and ONNX Runtime, fp32 and int8, against the teacher (needs `make distill` first).
bench-export: setup
	$(BIN)/python benchmarks/bench_export.py $(ARGS)

# Every test: unit tests, lint, and every notebook executed by nbval with KD_FAST=1, spread over
# TEST_WORKERS processes (pytest-xdist; one test file or notebook per worker at a time, each worker
# with its share of the CPUs as torch threads: see conftest.py). TEST_WORKERS=0: one process.
TEST_WORKERS ?= auto
test: setup
	$(BIN)/python -m kd_lib check
	KD_FAST=1 $(BIN)/python -m pytest -n $(TEST_WORKERS) --maxprocesses 4 --dist loadfile

check: setup
	$(BIN)/python -m kd_lib check

lint: setup
	$(BIN)/ruff check .

# Re-execute notebooks with the default (not KD_FAST) parameters and store the outputs: every
# notebook and solution notebook, or only those numbered NB (make notebooks NB=05, NB="05 09").
NB ?= [0-9][0-9]
notebooks: setup
	cd notebooks && for n in $(NB); do for nb in $${n}_*.ipynb solutions/$${n}_solutions.ipynb; do \
		[ -f "$$nb" ] || continue; echo "executing $$nb"; \
		env -u KD_FAST $(abspath $(BIN))/jupyter nbconvert --to notebook --execute --inplace \
			--ExecutePreprocessor.timeout=1800 "$$nb" || exit 1; done; done

# Slide decks (slides/*.md) → slides/build/*.html, figures from the committed notebooks' outputs.
slides: setup
	$(BIN)/python scripts/build_slides.py --out slides/build

# The course website in _build/site (nothing re-executed, nothing downloaded), then its checks:
# internal links and three pages in headless Chromium (apt-get install chromium).
site: setup
	$(BIN)/python scripts/build_site.py --out _build/site

site-check: site
	$(BIN)/python scripts/check_site.py _build/site

clean-venv:
	rm -rf $(VENV)
