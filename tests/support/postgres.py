"""A PostgreSQL cluster of a test's own, on a spare port of 127.0.0.1, that the test may stop and start under a
running server. Debian's server binaries (initdb, pg_ctl; `make test` installs them); never the shared server.
"""

import os
import pwd
import shutil
import subprocess
import tempfile
from glob import glob
from pathlib import Path

import psycopg

from tests.support.server import free_port

# The newest installed major version, e.g. /usr/lib/postgresql/15/bin.
BIN_DIRS = sorted(glob("/usr/lib/postgresql/*/bin"), key=lambda path: int(Path(path).parent.name))


class Cluster:
    """initdb'd into a temporary directory and started; `url` is its database `chatapi`, owned by postgres."""

    def __init__(self):
        assert BIN_DIRS, "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin (make test installs them)"
        self.bin = Path(BIN_DIRS[-1])
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="chatapi-pg-"))
        self.data = self.dir / "data"
        # initdb and postgres refuse to run as root: as root, the cluster belongs to Debian's postgres user.
        self.owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        if self.owner:
            os.chown(self.dir, self.owner.pw_uid, self.owner.pw_gid)
        self.run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-sync")
        self.start()
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute("CREATE DATABASE chatapi")
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/chatapi"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def run(self, tool: str, *args) -> None:
        as_owner = {"user": self.owner.pw_uid, "group": self.owner.pw_gid, "extra_groups": []} if self.owner else {}
        subprocess.run(
            [self.bin / tool, *map(str, args)], cwd=self.dir, check=True, capture_output=True, timeout=120, **as_owner
        )

    def start(self) -> None:
        """Start and wait until it accepts connections; its socket lives in its own directory."""
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.run("pg_ctl", "-D", self.data, "-l", self.dir / "postgres.log", "-o", options, "-w", "start")

    def stop(self, mode: str = "immediate") -> None:
        """`immediate` is a crash as far as clients see: every connection is cut at once, no checkpoint."""
        self.run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def log(self) -> str:
        return (self.dir / "postgres.log").read_text(errors="replace")

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop("fast")
        shutil.rmtree(self.dir, ignore_errors=True)
