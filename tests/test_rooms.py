"""The rooms: the model (chatapi/llm) and the web (chatapi/web) know nothing of Flask, the database or the rest of
the app (the app layer connects them), the imports between chatapi's modules run one way, and no module is longer
than MAX_LINES."""

import ast
from pathlib import Path

import chatapi
import chatapi.llm
import chatapi.web

APP = Path(chatapi.__file__).parent
LLM = Path(chatapi.llm.__file__).parent
WEB = Path(chatapi.web.__file__).parent
MAX_LINES = 450  # a module longer than this does more than one job: it is split by role (issue 21)
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


def leaves_the_room(name: str, room: str) -> bool:
    """An import of a web framework or the database, or of the app: a relative one out of the room's package, or
    an absolute one of chatapi outside the room."""
    parts = name.split(".")
    return parts[0] in FORBIDDEN or name.startswith("..") or (parts[0] == "chatapi" and parts[1:2] != [room])


def outside_imports(room: Path) -> set[tuple[str, str]]:
    """(file, import) for each import of a room's files that leaves the room."""
    return {
        (path.name, name) for path in room.glob("*.py") for name in imports_of(path) if leaves_the_room(name, room.name)
    }


def test_the_model_room_imports_no_web_framework_and_nothing_of_the_app():
    found = outside_imports(LLM)
    assert found == set()


def test_the_web_room_imports_no_web_framework_and_nothing_of_the_app():
    found = outside_imports(WEB)
    assert found == set()


def test_the_check_sees_an_import_of_the_app(tmp_path):
    """Guards the test above: the imports it looks for are found."""
    sample = tmp_path / "sample.py"
    sample.write_text("from flask import Flask\nfrom ..models import Chat\nimport sqlalchemy as sa\n")
    assert imports_of(sample) == {"flask", "..models", "sqlalchemy"}


def test_the_room_check_tells_the_app_from_the_room(tmp_path):
    """Guards the room tests: an absolute import of the app is found, one of the room's own is not."""
    room = tmp_path / "web"
    room.mkdir()
    (room / "sample.py").write_text(
        "import chatapi.web.fetch\nfrom chatapi.models import Chat\nfrom chatapi import db\n"
    )
    assert outside_imports(room) == {("sample.py", "chatapi.models"), ("sample.py", "chatapi")}


def test_no_module_of_the_app_is_over_450_lines():
    lines = {str(path.relative_to(APP.parent)): len(path.read_text().splitlines()) for path in APP.rglob("*.py")}
    assert {path: count for path, count in lines.items() if count > MAX_LINES} == {}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The imports run when the module is imported: those in its body, its classes and its if/try blocks; not
    those inside functions, which run only when called."""
    found, pending = [], list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            pending.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports at its top level. `from . import x` counts as an import of the
    module x when there is one; a package that a module's import runs on the way (its __init__) is not counted."""
    paths = {module_name(path, root): path for path in root.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = set()
        for node in top_level_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in paths else base for alias in node.names]
            graph[name].update(target for target in targets if target in paths and target != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The graph's cycles, one per strongly connected group of modules (Tarjan's algorithm), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for after in sorted(graph.get(node, ())):
            if after not in index:
                visit(after)
                low[node] = min(low[node], low[after])
            elif after in on_stack:
                low[node] = min(low[node], index[after])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_imports_between_the_apps_modules_run_one_way():
    assert cycles(import_graph(APP)) == []


def test_the_cycle_check_finds_a_cycle(tmp_path):
    """Guards the test above: two modules that import each other at their top level are a cycle; an import
    inside a function is not counted."""
    package = tmp_path / "chatapi"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from .views import bp\n")
    (package / "sub" / "views.py").write_text("from .. import models\nbp = 1\n")
    (package / "models.py").write_text("import chatapi.sub.views\n\ndef late():\n    from .sub import views\n")
    (package / "cold.py").write_text("def late():\n    from . import models\n")
    assert import_graph(package) == {
        "chatapi": set(),
        "chatapi.sub": {"chatapi.sub.views"},
        "chatapi.sub.views": {"chatapi.models"},
        "chatapi.models": {"chatapi.sub.views"},
        "chatapi.cold": set(),
    }
    assert cycles(import_graph(package)) == [["chatapi.models", "chatapi.sub.views"]]
