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

# Every figure in one run. SMTP is raced against Postfix's smtp-sink: installed here when
# apt-get can (root or sudo), else the bench says it used the slower aiosmtpd sink.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet mailmerge
	@command -v smtp-sink >/dev/null 2>&1 || [ -x /usr/sbin/smtp-sink ] || ! command -v apt-get >/dev/null 2>&1 || { \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  echo "bench: installing postfix for smtp-sink (not started as a mail server)"; \
	  echo "postfix postfix/main_mailer_type select No configuration" | $$SUDO debconf-set-selections; \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null || \
	    echo "bench: could not install postfix; SMTP runs against aiosmtpd"; }
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/signup.py
	$(BIN)/python bench/preview.py
	$(BIN)/python bench/render.py
	$(BIN)/python bench/subscribers.py --rows 1000000 --small 100000
	$(BIN)/python bench/send.py --subscribers 100000,1000000
	$(BIN)/python bench/soak.py
	$(BIN)/python bench/senders.py

clean:
	rm -rf $(VENV) dist outbox .demo .pytest_cache .ruff_cache
