"""nginx from Debian's packages (`make nginx`) in front of chatapi instances, configured by deploy/nginx.conf, the
file docs/deploy.md gives users: only its listen address and its upstream's servers are replaced."""

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

from tests.support.server import ROOT, free_port, stop_process, wait_for_startup

DEPLOY_CONF = ROOT / "deploy" / "nginx.conf"
STARTUP_SECONDS = 30
UPSTREAM_SERVER = re.compile(r"^(\s*)server \S+:\d+( [^;]*)?;\n", re.MULTILINE)
LISTEN = re.compile(r"^(\s*)listen \d+;$", re.MULTILINE)
ACCESS_LOG = re.compile(r"^(\s*)access_log \S+ chatapi_redacted;$", re.MULTILINE)
# Which instances each request went to, and how it ended (nginx writes a line when a response is over); tabs
# between the fields, since $upstream_addr lists the instances tried as "a, b".
LOG_FIELDS = ("method", "uri", "status", "upstream", "upstream_status")
LOG_FORMAT = "'$request_method\t$request_uri\t$status\t$upstream_addr\t$upstream_status'"


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    assert found, "nginx is not installed (make nginx installs Debian's nginx-light)"
    return found


def render(conf: str, port: int, servers: list[str], directory: Path) -> str:
    """deploy/nginx.conf listening on 127.0.0.1:port, its upstream the given HOST:PORTs (the options of its
    first `server` line kept)."""
    first = UPSTREAM_SERVER.search(conf)
    assert first and len(LISTEN.findall(conf)) == 1, "deploy/nginx.conf lost its upstream servers or its listen"
    indent, options = first.group(1), first.group(2) or ""
    lines = "".join(f"{indent}server {server}{options};\n" for server in servers)
    conf = conf[: first.start()] + lines + UPSTREAM_SERVER.sub("", conf[first.start() :])
    conf = LISTEN.sub(lambda m: f"{m.group(1)}listen 127.0.0.1:{port};", conf)
    # Its own access log, in this directory, beside the tests' (the server's access_log would replace theirs).
    assert len(ACCESS_LOG.findall(conf)) == 1, "deploy/nginx.conf lost its redacting access log"
    logs = r"\1access_log {0}/access.log deployment;\n\1access_log {0}/redacted.log chatapi_redacted;"
    return ACCESS_LOG.sub(logs.format(directory), conf)


class Nginx:
    """nginx in the foreground (`daemon off`), everything of its own (pid, logs, temporary files) under
    `directory`; `url` is its address. The main configuration is this starter's; the site is deploy/nginx.conf."""

    def __init__(self, directory: Path, servers: list[str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "chatapi.conf").write_text(render(DEPLOY_CONF.read_text(), self.port, servers, directory))
        temp = "\n".join(
            f"    {kind}_temp_path {directory / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        # As root nginx's workers would become `nobody`, who cannot enter pytest's private temporary directories.
        user = "user root;\n" if os.geteuid() == 0 else ""
        (directory / "nginx.conf").write_text(
            f"{user}worker_processes 1;\npid {directory / 'nginx.pid'};\nerror_log {directory / 'error.log'} info;\n"
            "events { worker_connections 512; }\n"
            f"http {{\n    log_format deployment {LOG_FORMAT};\n"
            f"    access_log {directory / 'access.log'} deployment;\n{temp}\n"
            f"    include {directory / 'chatapi.conf'};\n}}\n"
        )
        command = [nginx_binary(), "-p", str(directory), "-c", str(directory / "nginx.conf"), "-g", "daemon off;"]
        with open(directory / "stderr.log", "w") as log:
            self.process = subprocess.Popen(command, cwd=directory, stdout=log, stderr=subprocess.STDOUT)

    def __enter__(self) -> "Nginx":
        def accepting() -> bool:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True

        wait_for_startup(self.process, accepting, "nginx", self.errors, STARTUP_SECONDS, interval=0.05)
        return self

    def __exit__(self, *exc) -> None:
        stop_process(self.process)  # SIGTERM: nginx's fast shutdown

    def errors(self) -> str:
        return "".join(
            (self.dir / name).read_text(errors="replace")
            for name in ("stderr.log", "error.log")
            if (self.dir / name).exists()
        )

    def redacted_log(self) -> str:
        """deploy/nginx.conf's own access log (chatapi_redacted), as nginx wrote it."""
        path = self.dir / "redacted.log"
        return path.read_text() if path.exists() else ""

    def access_log(self) -> list[dict]:
        """The requests nginx has finished, oldest first: method, uri, status, upstream (the instances tried,
        ", "-separated), upstream_status (theirs, likewise)."""
        path = self.dir / "access.log"
        entries = []
        for line in path.read_text().splitlines() if path.exists() else []:
            entry = dict(zip(LOG_FIELDS, line.split("\t"), strict=True))
            entries.append({**entry, "status": int(entry["status"])})
        return entries
