"""The model room: the queue in front of the model, prompts, each reply's event stream, and the backend that makes
the text (the local model in its own thread, or a remote OpenAI-compatible server). It knows nothing of Flask or
the database (chatapi/replies.py connects them)."""
