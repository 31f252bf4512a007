"""The link between a controller and its long-lived agents on this machine: a local authenticated socket.

The controller listens on 127.0.0.1 (`Server`); each agent it starts connects with `connect`, the address
in its argv and the authkey only in its environment (`AUTHKEY_ENV`, removed once read). Messages are
pickled tuples (`multiprocessing.connection`). The W&B engine's agents use it; so can another package's
engine whose trials run in a pool of hpo's workers (tests/engines/random_engine.py).
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from multiprocessing.connection import Client, Connection, Listener, wait
from typing import Any, Callable, Protocol

AUTHKEY_ENV = "HPO_AGENT_AUTHKEY"


class Server:
    """A Listener on 127.0.0.1 whose connections are accepted by a background thread."""

    def __init__(self) -> None:
        self.authkey = secrets.token_bytes(32)
        self.listener = Listener(("127.0.0.1", 0), authkey=self.authkey)
        self.conns: list[Connection] = []
        self.closed = False
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        host, port = self.listener.address
        return f"{host}:{port}"

    @property
    def env(self) -> dict[str, str]:
        """What an agent's environment needs to connect (the authkey never goes in argv)."""
        return {AUTHKEY_ENV: self.authkey.hex()}

    def _accept(self) -> None:
        while True:
            try:
                conn = self.listener.accept()
            except Exception:
                if self.closed:
                    return
                continue
            with self._lock:
                self.conns.append(conn)

    def ready(self, timeout: float) -> list[Connection]:
        with self._lock:
            conns = list(self.conns)
        if not conns:
            time.sleep(timeout)
            return []
        return wait(conns, timeout)  # type: ignore[return-value]

    def drop(self, conn: Connection) -> None:
        with self._lock:
            self.conns.remove(conn)
        conn.close()

    def close(self) -> None:
        self.closed = True
        for conn in list(self.conns):
            self.drop(conn)
        self.listener.close()


def connect(address: str) -> Connection:
    """An agent's connection to its controller at HOST:PORT, with the authkey from the environment."""
    host, _, port = address.rpartition(":")
    return Client((host, int(port)), authkey=bytes.fromhex(os.environ.pop(AUTHKEY_ENV)))


class Served(Protocol):
    def serve(self) -> None: ...
    def stop(self, interrupted: bool) -> None: ...


def drive(make: Callable[[], Served], server: Any = None) -> None:
    """An engine's run: make its controller, serve it to the end and stop it (as interrupted on Ctrl-C, which
    goes on up). `server`: the fork server `prestart` started, closed when the controller cannot be made."""
    try:
        ctl = make()
    except BaseException:
        if server is not None:
            server.close()
        raise
    interrupted = False
    try:
        ctl.serve()
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        ctl.stop(interrupted)
