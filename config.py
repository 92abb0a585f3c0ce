"""Settings, read from the environment with defaults that serve a single box."""

import os

BASE_DIR = os.path.abspath(os.path.dirname(__file__))


def database_url() -> str:
    """DATABASE_URL, or a SQLite file under instance/; plain postgres URLs get the psycopg 3 driver."""
    url = os.environ.get("DATABASE_URL") or "sqlite:///" + os.path.join(BASE_DIR, "instance", "chatapi.db")
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def flag(name: str) -> bool:
    """An on/off setting: 1, true, yes or on."""
    return (os.environ.get(name) or "").strip().lower() in ("1", "true", "yes", "on")


def api_keys() -> tuple[str, ...]:
    """The keys of CHATAPI_API_KEYS (comma-separated) and of the file CHATAPI_API_KEYS_FILE (one a line; blank
    lines and # comments left out). A keys file that cannot be read or holds no key stops the server: whoever
    named it wanted keys, and serving without them would open everything."""
    keys = [key.strip() for key in (os.environ.get("CHATAPI_API_KEYS") or "").split(",")]
    path = os.environ.get("CHATAPI_API_KEYS_FILE")
    if path:
        with open(path, encoding="utf-8") as lines:
            from_file = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not from_file:
            raise ValueError(f"CHATAPI_API_KEYS_FILE {path} holds no key")
        keys += from_file
    return tuple(dict.fromkeys(key for key in keys if key))


class Config:
    SQLALCHEMY_DATABASE_URI = database_url()
    # Bodies above this size get a 413 before they are read.
    MAX_CONTENT_LENGTH = int(os.environ.get("CHATAPI_MAX_BODY_BYTES") or 1024 * 1024)
    CHATAPI_MAX_MESSAGE_CHARS = int(os.environ.get("CHATAPI_MAX_MESSAGE_CHARS") or 65536)
    # Messages one import may hold: the one worker checks and stores about 3,000 a second and serves nobody else
    # meanwhile (a 1 MB file of 10,000 short ones held it for 3 s); 1,000 is a third of a second, and far more
    # than the model ever reads of a chat (the latest turns that fit CHATAPI_N_CTX).
    CHATAPI_MAX_IMPORT_MESSAGES = int(os.environ.get("CHATAPI_MAX_IMPORT_MESSAGES") or 1000)

    # Where replies come from (see chatapi/llm): "local", the model in this process, or "openai", an
    # OpenAI-compatible server at CHATAPI_LLM_URL (its base URL, http://127.0.0.1:8001/v1) that holds the model.
    CHATAPI_LLM_BACKEND = (os.environ.get("CHATAPI_LLM_BACKEND") or "local").strip().lower()
    CHATAPI_LLM_URL = os.environ.get("CHATAPI_LLM_URL") or None
    CHATAPI_LLM_API_KEY = os.environ.get("CHATAPI_LLM_API_KEY") or None
    CHATAPI_LLM_MODEL = os.environ.get("CHATAPI_LLM_MODEL") or None  # else the first model the server lists
    # Seconds the server may stay silent (connecting, before its first byte, between two) before the reply
    # ends with an error event.
    CHATAPI_LLM_TIMEOUT = float(os.environ.get("CHATAPI_LLM_TIMEOUT") or 60)
    # The remote model's context window when the server does not say it (/v1/models, /props): else CHATAPI_N_CTX.
    CHATAPI_LLM_N_CTX = int(os.environ.get("CHATAPI_LLM_N_CTX") or 0) or None

    # The default model (see chatapi/llm/catalog.py): an id (`flask models list`) or a GGUF's path; the bundled
    # Gemma 3 270M (id gemma-3-270m) unless given. CHATAPI_MODEL_PATH is its old name, still read.
    CHATAPI_MODEL = os.environ.get("CHATAPI_MODEL") or os.environ.get("CHATAPI_MODEL_PATH") or None
    CHATAPI_MODEL_PATH = None
    # Where pulled models and their catalog (catalog.json) are kept; else instance/models, beside the bundled one.
    CHATAPI_MODELS_DIR = os.environ.get("CHATAPI_MODELS_DIR") or None
    # Models kept in memory at once: a reply for another waits until the least recently used one gives way.
    CHATAPI_MODELS_LOADED = int(os.environ.get("CHATAPI_MODELS_LOADED") or 1)
    # The model of /v1/embeddings (an id or a GGUF's path, as CHATAPI_MODEL); none: the default chat model. Loaded at
    # the first request for embeddings, beside the chat models, and kept (chatapi/llm/embeddings.py).
    CHATAPI_EMBEDDING_MODEL = os.environ.get("CHATAPI_EMBEDDING_MODEL") or None
    # Tokens the embedding model reads at once: an input's most. llama.cpp keeps n_vocab floats a token of it (the
    # bundled model's: 1 MB a token), so the default 512 costs about 0.5 GB once embeddings are first asked for.
    CHATAPI_EMBEDDING_N_CTX = int(os.environ.get("CHATAPI_EMBEDDING_N_CTX") or 512)
    CHATAPI_N_CTX = int(os.environ.get("CHATAPI_N_CTX") or 4096)
    CHATAPI_N_THREADS = int(os.environ.get("CHATAPI_N_THREADS") or os.cpu_count() or 1)
    CHATAPI_MAX_TOKENS = int(os.environ.get("CHATAPI_MAX_TOKENS") or 512)
    CHATAPI_SYSTEM_PROMPT = os.environ.get("CHATAPI_SYSTEM_PROMPT") or (
        "The following is a conversation between a curious Human and a helpful, honest Assistant. "
        "The Assistant answers clearly and briefly."
    )
    # Replies generated together (continuous batching); more wait in the queue.
    CHATAPI_PARALLEL = int(os.environ.get("CHATAPI_PARALLEL") or 4)
    # Tokens decoded in one step at most (one per running reply, the rest from prompts being read): a long
    # prompt stalls the running replies for one step of this size at a time.
    CHATAPI_STEP_TOKENS = int(os.environ.get("CHATAPI_STEP_TOKENS") or 128)
    # Replies waiting or running at once; more get 503 with Retry-After.
    CHATAPI_QUEUE_SIZE = int(os.environ.get("CHATAPI_QUEUE_SIZE") or 8)
    # Chats whose KV cache is kept, so that their next turn starts where the last one ended
    # (at least CHATAPI_PARALLEL: each running reply holds one).
    CHATAPI_KV_CHATS = int(os.environ.get("CHATAPI_KV_CHATS") or 6)
    # Chats' KV-cache states kept on disk, so that a chat out of memory (or after a restart) reads only its new
    # tokens: at most this many MB in all, the least recently used going first (0: none kept). The bundled model's
    # state of a 3,000-token chat takes 17 MB; a 7B model's about 0.1 MB a token.
    CHATAPI_KV_DISK_MB = float(os.environ.get("CHATAPI_KV_DISK_MB") or 2048)
    # Where they are kept (none: instance/kv).
    CHATAPI_KV_DIR = os.environ.get("CHATAPI_KV_DIR") or None
    CHATAPI_PING_SECONDS = float(os.environ.get("CHATAPI_PING_SECONDS") or 15)
    # A generation nobody has listened to for this long is stopped.
    CHATAPI_GRACE_SECONDS = float(os.environ.get("CHATAPI_GRACE_SECONDS") or 10)
    # Finished replies stay in memory for reconnects (Last-Event-ID, a second tab), as their SSE events, the oldest
    # giving way beyond this many MB: 64 hold about 900 replies of the default 512 tokens (~70 KB each), while a
    # reconnect comes within seconds of a reply's end. /v1 replies are never kept (nobody can come back for them).
    CHATAPI_REPLIES_KEPT_MB = float(os.environ.get("CHATAPI_REPLIES_KEPT_MB") or 64)

    # Internet mode (see chatapi/web).
    # The search backends to try in turn, each optionally with its endpoint:
    # "duckduckgo,searxng=http://127.0.0.1:8888/search" (chatapi/web/search.py backends_from reads it at start).
    CHATAPI_SEARCH_BACKEND = os.environ.get("CHATAPI_SEARCH_BACKEND") or "duckduckgo"
    # The first backend's endpoint when the list names none; the others' default to their public one.
    CHATAPI_SEARCH_URL = os.environ.get("CHATAPI_SEARCH_URL") or None
    CHATAPI_SEARCH_RESULTS = int(os.environ.get("CHATAPI_SEARCH_RESULTS") or 5)
    CHATAPI_FETCH_TIMEOUT = float(os.environ.get("CHATAPI_FETCH_TIMEOUT") or 8)
    # Hosts or CIDRs that may be fetched although not public (a self-hosted wiki, the tests' server).
    CHATAPI_FETCH_ALLOW = os.environ.get("CHATAPI_FETCH_ALLOW") or ""
    CHATAPI_RESEARCH_TIMEOUT = float(os.environ.get("CHATAPI_RESEARCH_TIMEOUT") or 15)
    # Tokens of the prompt kept for web sources (at most half the window), and where they go: in the latest
    # Human turn, before or after the question, or at the head of the system prompt (docs/configuration.md says why).
    CHATAPI_SOURCES_TOKENS = int(os.environ.get("CHATAPI_SOURCES_TOKENS") or 512)
    CHATAPI_SOURCES_LAYOUT = os.environ.get("CHATAPI_SOURCES_LAYOUT") or "sources-first"

    # Accounts (chatapi/auth.py): any key, or any person in the database, turns them on for every route but /health,
    # the page and the API document; these keys act as the admin named `admin`. Clients send
    # `Authorization: Bearer <key>`; the page signs in for a cookie (POST /session), whose session the database keeps.
    CHATAPI_API_KEYS = api_keys()
    CHATAPI_SESSION_SECONDS = int(os.environ.get("CHATAPI_SESSION_SECONDS") or 7 * 24 * 3600)
    # Without keys gunicorn.conf.py refuses to listen on anything but a loopback address, unless told that the
    # network is trusted.
    CHATAPI_ALLOW_NO_AUTH = flag("CHATAPI_ALLOW_NO_AUTH")
    # Behind a reverse proxy: believe its X-Forwarded-For, -Proto, -Host and -Port (one proxy in front).
    CHATAPI_TRUST_PROXY = flag("CHATAPI_TRUST_PROXY")
    # Host names served besides this machine's own (loopback, its host name and addresses; chatapi/guard.py),
    # comma-separated: a reverse proxy's public name, a LAN name. Another Host gets 403, so that a web page on a
    # name of its own that resolves here (DNS rebinding) cannot use the server. `*` serves any (unsafe without keys).
    CHATAPI_ALLOWED_HOSTS = os.environ.get("CHATAPI_ALLOWED_HOSTS") or ""

    # Serving others (see chatapi/cors.py, chatapi/limits.py).
    # Origins whose pages may call the API from a browser, comma-separated (https://app.example.com); none when empty.
    CHATAPI_CORS_ORIGINS = os.environ.get("CHATAPI_CORS_ORIGINS") or ""
    # Rate limits per API key, else per client address, in Flask-Limiter's notation ("600/minute", several
    # joined by ";"). Off when empty: how many requests are too many depends on how many people share a key
    # or an address, which only the one running the server knows (docs/deploy.md, "Rate limits", gives examples).
    # Every request but /health, CORS preflights and static files:
    CHATAPI_RATE_LIMIT = os.environ.get("CHATAPI_RATE_LIMIT") or ""
    # Requests that start a reply (joining or resuming one never counts):
    CHATAPI_RATE_LIMIT_REPLIES = os.environ.get("CHATAPI_RATE_LIMIT_REPLIES") or ""
    # Wrong API keys and sessions per client address, whenever keys are on (whatever CHATAPI_RATE_LIMIT says): over
    # it, any request with a key or session from that address gets 429 until the window frees one, so keys cannot be
    # guessed at the server's speed. Room for a mistyped key and a browser's expired session (a few requests).
    CHATAPI_RATE_LIMIT_AUTH_FAILURES = os.environ.get("CHATAPI_RATE_LIMIT_AUTH_FAILURES") or "10/minute;100/hour"
    # Where the counts live: in the process, or a URL the limits library knows (redis://host:6379 needs the
    # redis package; the keys start with CHATAPI_REDIS_PREFIX), shared by several servers.
    CHATAPI_RATE_LIMIT_STORAGE = os.environ.get("CHATAPI_RATE_LIMIT_STORAGE") or "memory://"
    # Tokens (prompt and completion together) each person's replies may use per UTC day (chatapi/usage.py): past it,
    # starting a reply gets 429 until midnight UTC. 0 or empty: no quota. Nothing counts while accounts are off.
    CHATAPI_DAILY_TOKENS = int(os.environ.get("CHATAPI_DAILY_TOKENS") or 0)

    # Several processes or hosts (docs/deploy.md): with a Redis URL, each chat's reply is published to a Redis
    # stream, so that any process can resume or stop it, and a chat has one reply at a time across all of them
    # (chatapi/llm/redis_replies.py). Keys start with the prefix; a process that dies lets go of its chats within the
    # lease; finished replies' streams expire after the TTL.
    CHATAPI_REDIS_URL = os.environ.get("CHATAPI_REDIS_URL") or None
    CHATAPI_REDIS_PREFIX = os.environ.get("CHATAPI_REDIS_PREFIX") or "chatapi:"
    CHATAPI_REDIS_LEASE_SECONDS = float(os.environ.get("CHATAPI_REDIS_LEASE_SECONDS") or 10)
    CHATAPI_REDIS_TTL_SECONDS = int(os.environ.get("CHATAPI_REDIS_TTL_SECONDS") or 3600)

    # Store each exchange of the OpenAI-compatible API (/v1/chat/completions) as a chat, shown in the page and
    # the chat API; off: such requests leave nothing behind (chatapi/openai_api/store.py).
    CHATAPI_OPENAI_STORE = flag("CHATAPI_OPENAI_STORE")

    API_TITLE = "chatapi"
    API_VERSION = "1.0"
    OPENAPI_VERSION = "3.0.3"
    OPENAPI_URL_PREFIX = "/"
    OPENAPI_JSON_PATH = "openapi.json"
    OPENAPI_SWAGGER_UI_PATH = "docs"
    # Served by the app itself from the swagger-ui-bundle package: no CDN.
    OPENAPI_SWAGGER_UI_URL = "/docs/assets/"
    # No badge from swagger.io's validator: the docs page loads nothing from elsewhere (and its policy allows nothing).
    OPENAPI_SWAGGER_UI_CONFIG = {"validatorUrl": None}
