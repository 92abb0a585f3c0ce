"""The documentation stays true: every relative link in README.md and docs/*.md resolves (to a file, and to a
heading where a #anchor points into Markdown), every setting config.py and gunicorn.conf.py read is in
docs/configuration.md, and the README stays a front door (issue 21)."""

import ast
import re
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_DOC = ROOT / "docs" / "configuration.md"
README_MAX_LINES = 200

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+).*?(?<!`)\1(?!`)", re.S)
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
HTML_LINK = re.compile(r"<(?:a|img)\s[^>]*?(?:href|src)=\"([^\"]+)\"", re.I)
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
ENV_READERS = {"os.environ.get", "environ.get", "os.getenv", "getenv"}


def prose_lines(text: str) -> list[str]:
    """The lines of a Markdown text outside fenced code blocks."""
    lines, fence = [], None
    for line in text.splitlines():
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
        elif fence is not None and match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
            fence = None
        elif fence is None:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lower-cased, punctuation dropped, spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors by its text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a Markdown text's headings, a repeated one numbered as GitHub does (-1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(text):
        match = HEADING.match(line)
        if not match:
            continue
        name = slug(match.group(1))
        count = seen.get(name, 0)
        seen[name] = count + 1
        found.add(name if count == 0 else f"{name}-{count}")
    return found


def link_targets(text: str) -> list[str]:
    """Every link's target in a Markdown text, outside code: inline links and images, references, HTML."""
    prose = CODE_SPAN.sub("", "\n".join(prose_lines(text)))
    return [match.group(1) for pattern in (INLINE_LINK, REFERENCE, HTML_LINK) for match in pattern.finditer(prose)]


def broken_links(files: list[Path], root: Path) -> list[str]:
    """`file: target (why)` for every relative link of the files that leads nowhere inside root."""
    broken = []
    for path in files:
        for target in link_targets(path.read_text(encoding="utf-8")):
            if SCHEME.match(target) or target.startswith("//"):
                continue  # another site: not this repository's to keep
            file_part, _, anchor = target.partition("#")
            file_part = unquote(file_part)
            if not file_part:
                resolved = path
            elif file_part.startswith("/"):
                resolved = root / file_part.lstrip("/")
            else:
                resolved = path.parent / file_part
            resolved = resolved.resolve()
            where = f"{path.relative_to(root)}: {target}"
            if not resolved.is_relative_to(root.resolve()):
                broken.append(f"{where} (outside the repository)")
            elif not resolved.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.read_text(encoding="utf-8")):
                broken.append(f"{where} (no heading #{anchor} in {resolved.relative_to(root.resolve())})")
    return broken


def settings_read(source: str) -> set[str]:
    """The environment variables a Python module reads: os.environ.get / os.getenv / os.environ[...] / `in
    os.environ` with a literal name, and calls with a literal name to the module's own functions that pass their
    parameter on to such a read (config.py's `flag`)."""
    tree = ast.parse(source)

    def reads(node: ast.AST) -> str | None:
        """The literal or parameter name a node reads from the environment, as an ast node's source."""
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ENV_READERS and node.args:
            return ast.unparse(node.args[0])
        if isinstance(node, ast.Subscript) and ast.unparse(node.value) in ("os.environ", "environ"):
            return ast.unparse(node.slice)
        if isinstance(node, ast.Compare) and any(ast.unparse(c) in ("os.environ", "environ") for c in node.comparators):
            return ast.unparse(node.left)
        return None

    readers = set()
    for function in tree.body:
        if isinstance(function, ast.FunctionDef):
            parameters = {argument.arg for argument in function.args.args}
            if any(reads(node) in parameters for node in ast.walk(function)):
                readers.add(function.name)
    names = set()
    for node in ast.walk(tree):
        read = reads(node)
        if read is None and isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args:
            if node.func.id in readers:
                read = ast.unparse(node.args[0])
        if read is not None:
            try:
                value = ast.literal_eval(read)
            except (ValueError, SyntaxError):
                continue  # a name computed at run time (a reader's own parameter)
            if isinstance(value, str):
                names.add(value)
    return names


def settings_documented(markdown: str) -> set[str]:
    """The variables a Markdown text documents: the `NAME`s in the first cell of its tables' rows."""
    names = set()
    for line in prose_lines(markdown):
        cells = line.strip().split("|")
        if line.strip().startswith("|") and len(cells) > 2:
            names.update(re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[1]))
    return names


def test_every_relative_link_resolves():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = broken_links(files, ROOT)
    assert not broken, "\n".join(broken)


def test_every_setting_the_server_reads_is_documented():
    read = settings_read((ROOT / "config.py").read_text()) | settings_read((ROOT / "gunicorn.conf.py").read_text())
    # The reader must see every way config.py and gunicorn.conf.py read a name, or an empty set would pass.
    assert {"DATABASE_URL", "CHATAPI_MAX_BODY_BYTES", "CHATAPI_API_KEYS_FILE", "CHATAPI_ALLOW_NO_AUTH"} <= read
    assert {"HOST", "PORT", "WEB_CONCURRENCY"} <= read
    assert sorted(read - settings_documented(SETTINGS_DOC.read_text())) == []


def test_every_documented_setting_is_read_somewhere():
    sources = [ROOT / "config.py", ROOT / "gunicorn.conf.py", *ROOT.glob("tests/**/*.py"), *ROOT.glob("bench/**/*.py")]
    read = set().union(*(settings_read(path.read_text(encoding="utf-8")) for path in sources))
    assert sorted(settings_documented(SETTINGS_DOC.read_text()) - read) == []


def test_readme_is_a_front_door():
    assert len((ROOT / "README.md").read_text().splitlines()) <= README_MAX_LINES


# The checkers themselves: each must fail on what it is there to catch.


def test_slugs_are_githubs():
    assert slug("Why `CHATAPI_N_THREADS` is all cores") == "why-chatapi_n_threads-is-all-cores"
    assert slug("Memory: 2,000 replies and 2,000 /v1 completions") == "memory-2000-replies-and-2000-v1-completions"
    assert slug("Internet mode's answers") == "internet-modes-answers"
    assert slug("See [the API](api.md)") == "see-the-api"
    assert anchors("# Notes\n\n## Notes\n\n```\n# not a heading\n```\n") == {"notes", "notes-1"}


def test_broken_links_are_caught(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n\n## Set-up: `make run`\n\n[back](../README.md#top)\n")
    (tmp_path / "README.md").write_text(
        "# Top\n\n## Here\n\n"
        "[ok](docs/guide.md) [ok](docs/guide.md#set-up-make-run) [ok](#here) [ok](https://example.com/x.md)\n"
        '![ok](docs/guide.md) [ok][ref] <a href="docs/guide.md">ok</a>\n\n'
        "[gone](docs/missing.md) [bad anchor](docs/guide.md#nowhere) [bad here](#there) [out](../../etc/passwd)\n"
        "![gone image](docs/missing.png) [wrapped\ntext](docs/also-missing.md)\n\n"
        "`[code](docs/not-a-link.md)`\n\n```\n[fenced](docs/not-a-link.md)\n```\n\n"
        "[ref]: docs/guide.md\n[dead]: docs/dead.md\n"
    )
    assert broken_links([tmp_path / "README.md", tmp_path / "docs" / "guide.md"], tmp_path) == [
        "README.md: docs/missing.md (no such file)",
        "README.md: docs/guide.md#nowhere (no heading #nowhere in docs/guide.md)",
        "README.md: #there (no heading #there in README.md)",
        "README.md: ../../etc/passwd (outside the repository)",
        "README.md: docs/missing.png (no such file)",
        "README.md: docs/also-missing.md (no such file)",
        "README.md: docs/dead.md (no such file)",
    ]


def test_a_missing_setting_is_caught():
    config = (
        "import os\n\n\n"
        "def flag(name):\n    return os.environ.get(name) == '1'\n\n\n"
        "class Config:\n"
        "    A = os.environ.get('CHATAPI_A') or 1\n"
        "    B = flag('CHATAPI_B')\n"
        "    C = os.environ['CHATAPI_C']\n"
        "    D = os.getenv('CHATAPI_D', 'x')\n"
        "    E = 'CHATAPI_E' in os.environ\n"
        "    F = 'CHATAPI_F'  # a string, not a read\n"
    )
    docs = "| variable | default |\n|---|---|\n| `CHATAPI_A` (or `CHATAPI_D`) | 1 |\n| x | `CHATAPI_C` |\n"
    assert settings_read(config) == {"CHATAPI_A", "CHATAPI_B", "CHATAPI_C", "CHATAPI_D", "CHATAPI_E"}
    assert settings_read(config) - settings_documented(docs) == {"CHATAPI_B", "CHATAPI_C", "CHATAPI_E"}
