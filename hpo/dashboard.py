"""optuna-dashboard for a sweep's storage, on 127.0.0.1 unless told otherwise.

Two guards sit in front of it, as MLflow's `--allowed-hosts` does for its UI: a request whose `Host`
is not this machine's loopback name (or one given with `--allowed-hosts`) is refused, so a web page
that rebinds its DNS name to 127.0.0.1 cannot drive it; and, unless `--writable`, only reads pass,
so nobody can create, rename, delete or tell a study's trials while a sweep writes it.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any, Callable, Iterable

from hpo import keys, storage
from hpo.errors import MissingDependency

LOCAL = ("127.0.0.1", "localhost", "::1")
# The study attributes a person reads in the dashboard; hpo's other `hpo.*` ones (the sweep file as JSON, the
# controller's launch record, ...) are its bookkeeping and stay out of "Study User Attributes".
SHOWN = (keys.BACKEND, keys.BUDGET, keys.TRAINER, keys.GIT_SHA, keys.EXPERIMENT_ID, keys.PARENT_RUN_ID)
READS = ("GET", "HEAD", "OPTIONS")


def _hostname(host_header: str) -> str:
    """`[::1]:8080` -> `::1`, `Example.COM:80` -> `example.com`."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def guard(app: Callable, allowed_hosts: Iterable[str], writable: bool) -> Callable:
    """A WSGI app that passes to `app` only requests for an allowed Host, and only reads unless `writable`."""
    allowed = {h.lower() for h in allowed_hosts}

    def guarded(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        host = _hostname(environ.get("HTTP_HOST", ""))
        if "*" not in allowed and host not in allowed:
            return _refuse(start_response, f"host {host!r} is not allowed; start the dashboard with "
                                           f"--allowed-hosts {host or 'NAME'} to serve it")
        if not writable and environ.get("REQUEST_METHOD", "GET").upper() not in READS:
            return _refuse(start_response, "the dashboard is read-only; start it with --writable to change studies")
        return app(environ, start_response)

    return guarded


def without_bookkeeping(app: Callable) -> Callable:
    """A WSGI app whose study page (GET /api/studies/N) lists the study's own attributes and hpo's SHOWN ones."""

    def wrapped(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "GET" or not re.fullmatch(r"/api/studies/\d+", environ.get("PATH_INFO", "")):
            return app(environ, start_response)
        said: dict[str, Any] = {}
        body = b"".join(app(environ, lambda status, headers, exc_info=None: said.update(status=status, headers=headers)))
        try:
            data = json.loads(body)
            data["user_attrs"] = [a for a in data.get("user_attrs", [])
                                  if not str(a.get("key", "")).startswith(keys.PREFIX) or a.get("key") in SHOWN]
            body = json.dumps(data).encode()
        except (ValueError, AttributeError, TypeError):  # not the JSON it serves: passed on as it came
            pass
        headers = [(k, v) for k, v in said.get("headers", []) if k.lower() != "content-length"]
        start_response(said.get("status", "200 OK"), [*headers, ("Content-Length", str(len(body)))])
        return [body]

    return wrapped


def _refuse(start_response: Callable, why: str) -> list[bytes]:
    body = why.encode()
    start_response("403 Forbidden", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def serve(url: str, host: str = "127.0.0.1", port: int = 8080, allowed_hosts: Iterable[str] = (),
          writable: bool = False, study: str | None = None) -> int:
    """Run optuna-dashboard in the foreground until Ctrl-C; the address printed opens `study`'s page."""
    try:
        from bottle import run
        from optuna_dashboard import wsgi
    except ImportError:
        raise MissingDependency("optuna-dashboard", "hpo dashboard") from None
    if host not in LOCAL:
        print(f"hpo: warning: the dashboard on {host} has no authentication; anyone who can reach "
              f"port {port} can read{' and change' if writable else ''} the study", file=sys.stderr)
    names = {*LOCAL, *allowed_hosts, *([host] if host not in ("0.0.0.0", "::") else [])}
    store = storage.open_storage(url)
    app = guard(without_bookkeeping(wsgi(store)), names, writable)
    page = ""
    if study:
        try:
            page = f"dashboard/studies/{store.get_study_id_from_name(study)}"
        except KeyError:  # another study name: the list of studies
            page = ""
    print(f"hpo: optuna-dashboard for {storage.mask(url)} at http://{host}:{port}/{page}"
          f"{'' if writable else ' (read-only; --writable to edit)'}", file=sys.stderr)
    try:
        run(app, host=host, port=port, quiet=True)
    except KeyboardInterrupt:
        pass
    return 0
