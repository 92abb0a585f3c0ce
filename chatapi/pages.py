"""GET /: the browser chat page (plain HTML, CSS and JavaScript from chatapi/static/)."""

from flask import Blueprint, Response, current_app, request

bp = Blueprint("pages", __name__)

# The page loads only its own files and talks only to this server; links (sources) may go anywhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# The page and the files under /static/ (the app's static route): its script, its stylesheet, its icon.
PAGE_ENDPOINTS = ("pages.index", "static")


@bp.route("/", methods=["GET"])
def index():
    """The chat page."""
    return current_app.send_static_file("index.html")


@bp.after_app_request
def protect_page(response: Response) -> Response:
    """The policy on the page and on its files (an SVG opened by itself is a document too), and no
    content-type sniffing, so that a file is only ever run or styled as what the server says it is."""
    if request.endpoint in PAGE_ENDPOINTS:
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
    return response
