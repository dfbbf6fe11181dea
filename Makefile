# Two commands do everything: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,postgres,ses]'
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	@./scripts/demo.sh $(BIN)

test: $(STAMP)
	$(BIN)/ruff check newsletter tests bench
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet mailmerge
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/signup.py
	$(BIN)/python bench/render.py
	$(BIN)/python bench/subscribers.py
	$(BIN)/python bench/send.py
	$(BIN)/python bench/soak.py
	$(BIN)/python bench/senders.py

clean:
	rm -rf $(VENV) dist outbox .demo .pytest_cache .ruff_cache
