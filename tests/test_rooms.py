"""The model room (chatapi/llm) knows nothing of Flask or the database: the app layer connects them."""

import ast
from pathlib import Path

import chatapi.llm

LLM = Path(chatapi.llm.__file__).parent
FORBIDDEN = ("flask", "flask_smorest", "flask_sqlalchemy", "flask_migrate", "sqlalchemy", "marshmallow", "werkzeug")


def imports_of(path: Path) -> set[str]:
    """Every module a file imports; relative imports that leave the package are written with their dots."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


def test_the_model_room_imports_no_web_framework_and_nothing_of_the_app():
    found = {
        (path.name, name)
        for path in LLM.glob("*.py")
        for name in imports_of(path)
        if name.split(".")[0] in FORBIDDEN or name.startswith("..") or name.startswith("chatapi.") and "llm" not in name
    }
    assert found == set()


def test_the_check_sees_an_import_of_the_app(tmp_path):
    """Guards the test above: the imports it looks for are found."""
    sample = tmp_path / "sample.py"
    sample.write_text("from flask import Flask\nfrom ..models import Chat\nimport sqlalchemy as sa\n")
    assert imports_of(sample) == {"flask", "..models", "sqlalchemy"}
