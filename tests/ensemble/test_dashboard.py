"""`cxrdet dashboard`: optuna-dashboard started on a tuned ensemble's storage, answering over HTTP on loopback."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxrdet.cli import app
from cxrdet.ensemble.dashboard import is_loopback
from tests.helpers.ensemble_world import make_world, write_config


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.read()


def _dashboard(config: Path) -> tuple[subprocess.Popen[str], str]:
    """Start `cxrdet dashboard CONFIG --port 0` and return it with its base URL (from the line it prints)."""
    proc = subprocess.Popen([sys.executable, "-m", "cxrdet", "dashboard", str(config), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    assert proc.stdout is not None
    line = proc.stdout.readline()
    found = re.search(r"at (http://127\.0\.0\.1:\d+)/dashboard/", line)
    if found is None:
        proc.kill()
        raise AssertionError(f"no URL in {line!r}; stderr: {proc.communicate()[1]}")
    return proc, found[1]


@pytest.mark.parametrize("storage", [None, "journal", pytest.param("postgresql", marks=pytest.mark.slow)])
def test_the_dashboard_answers_with_the_study_and_its_trials(tmp_path: Path, storage: str | None,
                                                             request: pytest.FixtureRequest) -> None:
    world = make_world(tmp_path)
    config = write_config(tmp_path / "ens.py", world, n_trials=3)
    urls = {None: None, "journal": f"journal:{tmp_path / 'journal.log'}"}
    url = request.getfixturevalue("postgres_url") if storage == "postgresql" else urls[storage]
    options = ["--storage", url] if url else []
    tuned = CliRunner().invoke(app, ["tune", str(config), "--n-trials", "3", "--no-honest", *options])
    assert tuned.exit_code == 0, tuned.output
    # No --storage for the dashboard: it finds the storage the ensemble was tuned with in params.json.
    proc, base = _dashboard(config)
    try:
        status, body = _get(f"{base}/api/studies")
        assert status == 200
        studies = {s["study_name"]: s for s in json.loads(body)["study_summaries"]}
        assert "ens" in studies
        status, body = _get(f"{base}/api/studies/{studies['ens']['study_id']}")
        trials = json.loads(body)["trials"]
        assert status == 200 and len([t for t in trials if t["state"] == "Complete"]) == 3
        status, page = _get(f"{base}/dashboard/")
        assert status == 200 and b"<html" in page.lower()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"the dashboard did not stop on SIGTERM; stderr: {proc.communicate()[1][-2000:]}")
    assert proc.returncode == 0, err


def test_an_unknown_ensemble_config_is_an_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["dashboard", str(tmp_path / "nope.py")])
    assert result.exit_code == 1 and "ensemble config not found" in result.output


def test_loopback_addresses() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10")


def test_a_busy_port_is_an_error_naming_it(tmp_path: Path) -> None:
    import socket

    from cxrdet.ensemble.dashboard import make_dashboard
    from cxrdet.errors import ConfigError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        expected = rf"dashboard: cannot listen on 127\.0\.0\.1:{port} .*expected a free port"
        with pytest.raises(ConfigError, match=expected):
            make_dashboard(f"sqlite:///{tmp_path / 'study.db'}", "127.0.0.1", port)
