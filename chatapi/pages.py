"""GET /: the browser chat page (plain HTML, CSS and JavaScript from chatapi/static/)."""

from flask import Blueprint, Response, current_app, request

bp = Blueprint("pages", __name__)

# The page loads only its own files and talks only to this server; links (sources) may go anywhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# The page and the docs page (/docs, flask-smorest's Swagger UI), and their files: the page's under /static/ (the
# app's static route: scripts, stylesheet, icon, the docs page's docs.js) and Swagger UI's under /docs/assets/.
PROTECTED_ENDPOINTS = ("pages.index", "static", "api-docs.openapi_swagger_ui", "docs_assets.static")
# Any other HTML: no site may show it in a frame (to trick a click on it).
NO_FRAMES = "frame-ancestors 'none'"


@bp.route("/", methods=["GET"])
def index():
    """The chat page."""
    return current_app.send_static_file("index.html")


@bp.after_app_request
def protect_page(response: Response) -> Response:
    """The policy on the pages and their files (an SVG opened by itself is a document too), no frames for any
    other HTML, and no content-type sniffing anywhere, so that a file is only ever run or styled as what the
    server says it is."""
    if request.endpoint in PROTECTED_ENDPOINTS:
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    elif response.mimetype == "text/html" and "Content-Security-Policy" not in response.headers:
        response.headers["Content-Security-Policy"] = NO_FRAMES
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
