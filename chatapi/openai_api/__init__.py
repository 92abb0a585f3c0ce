"""The OpenAI-compatible API under /v1: the model list, chat completions and legacy completions, streamed or not,
for the clients that speak OpenAI's API (its SDKs, Open WebUI, LibreChat, editors).

A completion is a reply of the same reply service as the chats' (the same queue, batching and metrics, mode
"openai"), answering the messages the request carries; nothing is stored unless CHATAPI_OPENAI_STORE is on.
Errors here are in OpenAI's shape (chatapi/errors.py).

views.py has the routes, schemas.py reads the request, wire.py writes the completion as OpenAI does (one object or
a stream of chunks) and store.py keeps the exchange as a chat when asked. completions.py adds /v1/completions to the
same blueprint (its request: completion_schemas.py): a raw prompt continued without the chat template. embeddings.py
serves /v1/embeddings.
"""

from . import completions, embeddings  # noqa: F401  (their routes, on bp)
from .views import bp

__all__ = ["bp"]
