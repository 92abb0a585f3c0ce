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


class Config:
    SQLALCHEMY_DATABASE_URI = database_url()
    # Bodies above this size get a 413 before they are read.
    MAX_CONTENT_LENGTH = int(os.environ.get("CHATAPI_MAX_BODY_BYTES") or 1024 * 1024)
    CHATAPI_MAX_MESSAGE_CHARS = int(os.environ.get("CHATAPI_MAX_MESSAGE_CHARS") or 65536)

    # The model (see chatapi/llm): the bundled Gemma 3 270M unless a GGUF path is given.
    CHATAPI_MODEL_PATH = os.environ.get("CHATAPI_MODEL_PATH") or None
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
    CHATAPI_PING_SECONDS = float(os.environ.get("CHATAPI_PING_SECONDS") or 15)
    # A generation nobody has listened to for this long is stopped.
    CHATAPI_GRACE_SECONDS = float(os.environ.get("CHATAPI_GRACE_SECONDS") or 10)

    # Internet mode (see chatapi/web).
    CHATAPI_SEARCH_BACKEND = os.environ.get("CHATAPI_SEARCH_BACKEND") or "duckduckgo"
    CHATAPI_SEARCH_URL = os.environ.get("CHATAPI_SEARCH_URL") or None
    CHATAPI_SEARCH_RESULTS = int(os.environ.get("CHATAPI_SEARCH_RESULTS") or 5)
    CHATAPI_FETCH_TIMEOUT = float(os.environ.get("CHATAPI_FETCH_TIMEOUT") or 8)
    # Hosts or CIDRs that may be fetched although not public (a self-hosted wiki, the tests' server).
    CHATAPI_FETCH_ALLOW = os.environ.get("CHATAPI_FETCH_ALLOW") or ""
    CHATAPI_RESEARCH_TIMEOUT = float(os.environ.get("CHATAPI_RESEARCH_TIMEOUT") or 15)

    # Serving others (see chatapi/cors.py, chatapi/limits.py).
    # Origins whose pages may call the API from a browser, comma-separated (https://app.example.com); none when empty.
    CHATAPI_CORS_ORIGINS = os.environ.get("CHATAPI_CORS_ORIGINS") or ""
    # Rate limits per API key, else per client address, in Flask-Limiter's notation ("600/minute", several
    # joined by ";"). Off when empty: how many requests are too many depends on how many people share a key
    # or an address, which only the one running the server knows (the README gives examples).
    # Every request but /health, CORS preflights and static files:
    CHATAPI_RATE_LIMIT = os.environ.get("CHATAPI_RATE_LIMIT") or ""
    # Requests that start a reply (joining or resuming one never counts):
    CHATAPI_RATE_LIMIT_REPLIES = os.environ.get("CHATAPI_RATE_LIMIT_REPLIES") or ""
    # Where the counts live: in the process, or a URL the limits library knows (redis://host:6379 needs the
    # redis package), shared by several servers.
    CHATAPI_RATE_LIMIT_STORAGE = os.environ.get("CHATAPI_RATE_LIMIT_STORAGE") or "memory://"

    API_TITLE = "chatapi"
    API_VERSION = "1.0"
    OPENAPI_VERSION = "3.0.3"
    OPENAPI_URL_PREFIX = "/"
    OPENAPI_JSON_PATH = "openapi.json"
    OPENAPI_SWAGGER_UI_PATH = "docs"
    # Served by the app itself from the swagger-ui-bundle package: no CDN.
    OPENAPI_SWAGGER_UI_URL = "/docs/assets/"
