"""A real PostgreSQL server on 127.0.0.1 for the tests, from Debian's ``postgresql`` package
(installed by ``.ci/run``): initdb into a temporary folder, pg_ctl start on a free port, one
database, trust authentication on loopback only. Stopped at the end.

PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` system user
(created by the package). Not a pytest plugin: tests import ``start_postgres``. When the server
cannot be started the test fails with the reason; it is never skipped.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "install it with `apt-get install -y postgresql` (as .ci/run does)"


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    if found:
        return found[0]
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"PostgreSQL's {name} was not found; {INSTALL_HINT}")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    folder: Path
    port: int
    user: str
    db: str
    run_as: list

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{self.db}"

    def stop(self) -> None:
        subprocess.run([*self.run_as, _bin("pg_ctl"), "-D", str(self.folder / "data"), "-m",
                        "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


def start_postgres(db: str = "edgekit") -> PgServer:
    """Start a throw-away PostgreSQL server; raises RuntimeError saying why it could not."""
    folder = Path(tempfile.mkdtemp(prefix="edgekit-pg-"))
    run_as: list = []
    user = pwd.getpwuid(os.getuid()).pw_name
    if os.getuid() == 0:
        try:
            pg = pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError(
                f"no `postgres` system user to run PostgreSQL as; {INSTALL_HINT}") from None
        os.chown(folder, pg.pw_uid, pg.pw_gid)
        run_as, user = ["runuser", "-u", "postgres", "--"], "postgres"
    port = _free_port()

    def run(*argv, timeout=120):
        proc = subprocess.run([*run_as, *argv], capture_output=True, text=True, timeout=timeout,
                              cwd=folder)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed ({proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()[-800:]}")
        return proc

    data = folder / "data"
    run(_bin("initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8",
        "--no-sync")
    run(_bin("pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w", "-t", "60",
        "-o", f"-k {folder} -p {port} -h 127.0.0.1 -c fsync=off", "start", timeout=90)
    server = PgServer(folder, port, user, db, run_as)
    try:
        run(_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, db)
    except RuntimeError:
        server.stop()
        raise
    return server
