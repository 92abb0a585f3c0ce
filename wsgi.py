"""The WSGI entry point: gunicorn serves wsgi:app."""

from chatapi import create_app

app = create_app()
