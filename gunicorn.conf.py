"""gunicorn settings shared by `make run` and the Procfile."""

import os

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '5000')}"
# gevent: one process serves many slow clients (event streams) at once.
worker_class = "gevent"
worker_connections = 1000
# One process per box: each worker would load its own copy of the model.
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
accesslog = "-"


def post_worker_init(worker):
    """Load the model as soon as the worker is up, in the background: /health says when it is ready."""
    worker.wsgi.extensions["replies"].load()
