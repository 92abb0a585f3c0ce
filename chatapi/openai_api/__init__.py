"""The OpenAI-compatible API under /v1 (its routes: views.py)."""

from .views import bp

__all__ = ["bp"]
