"""The ensemble tests' world (a tiny ensemble on disk, `tests.helpers.ensemble_world`) and a throw-away PostgreSQL
server for the storage tests."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.ensemble_world import make_world


@pytest.fixture
def world(tmp_path: Path) -> dict[str, object]:
    return make_world(tmp_path)


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL server on loopback (CI installs it with `apt-get install -y postgresql`)."""
    pytest.importorskip("psycopg", reason="psycopg (requirements-test.txt) is needed for PostgreSQL")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries not found (apt-get install -y postgresql)")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="cxrdet-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root
        runuser = shutil.which("runuser")
        try:
            import pwd

            pw = pwd.getpwnam("postgres")
        except KeyError:
            pw = None
        if not runuser or pw is None:
            pytest.skip("running as root without a 'postgres' user to start the server as")
        os.chown(folder, pw.pw_uid, pw.pw_gid)
        as_user = [runuser, "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = folder / "data"
    done = subprocess.run([*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth=trust"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"initdb failed: {done.stderr.strip()[-300:]}")
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    done = subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w",
                           "start"], capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"the PostgreSQL server did not start: {done.stderr.strip()[-300:]}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
