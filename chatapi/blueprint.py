"""The Blueprint every route module uses: flask-smorest's, with a stricter JSON body parser."""

import json

import flask_smorest
from flask_smorest import abort
from webargs.flaskparser import FlaskParser


class JSONBodyParser(FlaskParser):
    """Reads the body as JSON whatever its Content-Type (curl -d sends a form type).

    A body that is not JSON, or not a JSON object, is a 400 rather than a field error.
    """

    def load_json(self, req, schema):
        try:
            body = json.loads(req.get_data(cache=True))
        except (ValueError, UnicodeDecodeError):
            abort(400, message="request body must be JSON")
        except RecursionError:  # a valid body too, but nested deeper than any request needs
            abort(400, message="request body is nested too deeply")
        if not isinstance(body, dict):
            abort(400, message="request body must be a JSON object")
        return body


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = JSONBodyParser()
