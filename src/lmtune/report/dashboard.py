"""optuna-dashboard on a study's storage, bound to the loopback interface only.

The storage holds the full training arguments and config of every trial, so the dashboard listens on
127.0.0.1 by default: other machines reach it only through an SSH tunnel the user opens on purpose.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from lmtune.errors import ConfigError
from lmtune.storage import open_storage

DEFAULT_PORT = 8080


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would bury the URL the user needs


def create_server(storage: str, study_name: str | None = None, host: str = "127.0.0.1",
                  port: int = DEFAULT_PORT) -> tuple[WSGIServer, str]:
    """A bound (not yet serving) optuna-dashboard server and the URL to open: the study's own page when the
    study exists, the list of studies otherwise. Port 0 picks a free port."""
    if storage == "memory://":
        raise ConfigError("a memory:// study lives only in the process that ran it; the dashboard needs a "
                          "database storage such as sqlite:///lmtune.db")
    try:
        from optuna_dashboard import wsgi
    except ImportError:
        raise ConfigError("optuna-dashboard is not installed; pip install optuna-dashboard") from None
    store = open_storage(storage)
    app = wsgi(store)
    try:
        server = make_server(host, port, app, handler_class=_QuietHandler)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e}); pass another --port") from None
    url_host = f"[{host}]" if ":" in host else host
    url = f"http://{url_host}:{server.server_port}/dashboard"
    if study_name is not None:
        with contextlib.suppress(KeyError):  # not created yet (a run about to start): the list will show it
            url += f"/studies/{store.get_study_id_from_name(study_name)}"
    return server, url


def serve(storage: str, study_name: str | None = None, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          announce: Callable[[str], None] | None = None) -> None:
    """Serve optuna-dashboard until Ctrl-C; `announce` gets the URL once the port is bound."""
    server, url = create_server(storage, study_name, host, port)
    (announce or (lambda u: print(u, flush=True)))(url)
    # Requests are served on another thread: wsgiref catches any exception raised while it handles a request,
    # KeyboardInterrupt included, so a Ctrl-C landing mid-request would be printed and ignored.
    worker = threading.Thread(target=server.serve_forever, daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.5)
    except KeyboardInterrupt:
        stopper = threading.Thread(target=server.shutdown, daemon=True)  # waits for the request in progress
        stopper.start()
        stopper.join(5)
    finally:
        server.server_close()
