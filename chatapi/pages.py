"""GET /: the browser chat page (plain HTML, CSS and JavaScript from chatapi/static/)."""

from flask import Blueprint, current_app

bp = Blueprint("pages", __name__)

# The page loads only its own files and talks only to this server; links (sources) may go anywhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@bp.route("/", methods=["GET"])
def index():
    """The chat page."""
    response = current_app.send_static_file("index.html")
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
