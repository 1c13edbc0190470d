# make demo : build .venv if missing, make the tiny checkpoint, answer a question about assets/demo.png
# make test : build .venv if missing, run the test suite
# torch==2.13.0 goes in first (a CPU build from local disk here), so nothing pulls a multi-GB CUDA build.

PY_BOOT ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
TINY    := .tiny
TINY_CKPT := $(TINY)/llava-v1.5-tiny

.PHONY: demo test venv clean browser

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PY_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[train,serve,eval,dev]"
	touch $(STAMP)

$(TINY_CKPT)/config.json: $(STAMP)
	$(PY) -m llava.tools.make_tiny_checkpoint $(TINY)

demo: $(TINY_CKPT)/config.json
	$(PY) -m llava.eval.run_llava --model-path $(TINY_CKPT) --image-file assets/demo.png \
		--query "What is shown in this image?" --max_new_tokens 24

# the web demo's tests drive Debian's chromium through playwright (never `playwright install`)
browser:
	@command -v chromium >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
		else echo "the web demo tests need Debian's chromium: sudo apt-get install chromium" >&2; exit 1; fi; }

test: $(STAMP) browser
	$(PY) -m pytest -q

clean:
	rm -rf $(TINY) .pytest_cache
