"""The WSGI entry point: gunicorn serves wsgi:app."""

from chatapi import auth, create_app

app = create_app()
auth.make_key_admin(app)  # CHATAPI_API_KEYS's admin, there from the start (chatapi/auth.py)
