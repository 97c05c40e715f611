"""optuna-dashboard on an ensemble's study storage (`cxrdet dashboard ENSEMBLE`): every study `cxrdet tune` wrote there
(the main study and the honest estimate's held-out studies), their trials, parameter importances and plots.

The storage is the one the ensemble was tuned with (`params.json` records it), else the one its config names, else
the default SQLite file in its folder (`cxrdet.ensemble.tune.storage_url`): SQLite, a `journal:PATH` log or
PostgreSQL alike. The server binds loopback by default (the studies hold the ensemble's parameters and scores; a
shared machine's other users should not read them unasked); port 0 picks a free port, and the URL is printed once
the server listens.
"""

from __future__ import annotations

import ipaddress
import signal
import threading
from collections.abc import Callable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from cxrdet.ensemble.spec import EnsembleSpec
from cxrdet.ensemble.tune import open_storage, redact, storage_url
from cxrdet.errors import ConfigError
from cxrdet.runs import EnsembleRun


def dashboard_storage(spec: EnsembleSpec, url: str | None = None) -> str:
    """The storage URL to show: `url`, else the one the ensemble was tuned with (`params.json`), else its config's or
    the default (`storage_url`)."""
    if url:
        return url
    run = EnsembleRun(spec.name)
    if run.is_tuned():
        recorded = (run.read_params().get("study") or {}).get("storage")
        if recorded and ":***@" not in str(recorded):  # a redacted password: the config's URL has it
            return str(recorded)
    return storage_url(spec)


class _QuietHandler(WSGIRequestHandler):
    """wsgiref's handler without a stderr line per request (the dashboard polls every few seconds)."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass


def make_dashboard(url: str, host: str = "127.0.0.1", port: int = 0) -> WSGIServer:
    """A WSGI server of optuna-dashboard's app on the storage at `url`, bound (not yet serving): its
    `server_port` is the real port when `port` is 0.

    Raises:
        ConfigError: The storage cannot be opened, or `host` is not an address (names resolve to one).
    """
    import optuna_dashboard

    storage = open_storage(url)
    try:
        return make_server(host, port, optuna_dashboard.wsgi(storage), handler_class=_QuietHandler)
    except OSError as err:
        raise ConfigError(f"dashboard: cannot listen on {host}:{port} ({err}); expected a free port (0 picks one) "
                          "and an address of this machine") from err


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address (`localhost` counts)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(spec: EnsembleSpec, url: str | None = None, host: str = "127.0.0.1", port: int = 0,
          announce: Callable[[str], None] = print) -> None:
    """Serve the dashboard of `spec`'s studies until interrupted; `announce` receives the line with the URL once the
    server listens."""
    storage = dashboard_storage(spec, url)
    server = make_dashboard(storage, host, port)
    shown = f"[{host}]" if ":" in host else host
    announce(f"optuna-dashboard of {spec.name} ({redact(storage)}) at http://{shown}:{server.server_port}/dashboard/ "
             "(Ctrl-C stops it)")

    # Ctrl-C and SIGTERM both stop it after the request in progress, also where the shell started it with SIGINT
    # ignored (a background job of a non-interactive shell). Not by raising from the handler: wsgiref's request
    # handler catches every exception, KeyboardInterrupt included, and would go on serving. `shutdown` waits for the
    # serving loop, which runs in this (the signal handler's) thread, so it is called from another.
    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.serve_forever()
    finally:
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
