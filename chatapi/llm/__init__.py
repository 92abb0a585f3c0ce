"""The model room: the local model in its own thread, the queue in front of it, prompts, and each
reply's event stream. It knows nothing of Flask or the database (chatapi/replies.py connects them)."""
