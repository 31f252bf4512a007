"""One place for masking secrets in what hpo prints, logs, tags or stores.

Two kinds: a password in a URL (`http://user:PASSWORD@host`, `postgresql://u:PASSWORD@h/db`, `?token=...`),
and the value of a secret environment variable (`MLFLOW_TRACKING_PASSWORD`, `WANDB_API_KEY`,
`AWS_SECRET_ACCESS_KEY`, ...) wherever an error message quotes it. The CLI also wraps its own stdout and
stderr (`install`), so a line that no hpo code masked itself — a library's warning, an exception that
quotes a URL — loses its secrets too before it reaches a terminal or a worker log.
"""

from __future__ import annotations

import io
import os
import re
import sys

SECRET_NAME = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|API_KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL", re.IGNORECASE)
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


RDB_SCHEMES = ("postgresql", "postgres", "mysql", "sqlite", "oracle", "mssql")


def is_rdb(url: str) -> bool:
    """Whether a storage URL names a database (else: a journal file path)."""
    return bool(re.match(rf"^({'|'.join(RDB_SCHEMES)})(\+\w+)?://", url))


def mask(url: str) -> str:
    """The URL with any password replaced by ***, safe to print, log or tag. (SQLAlchemy's
    `URL.render_as_string(hide_password=True)` masks only database URLs it can parse; this takes any
    scheme, an HTTP tracking URI included, and `?password=` / `token=` in the query.)"""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    tail = re.sub(r"(?i)((?:password|passwd|pwd|token|key)=)[^&]*", r"\1***", tail)
    return f"{scheme}{sep}{netloc}{slash}{tail}"


def secret_values() -> list[str]:
    """Values of this process's secret-named environment variables (long enough not to be a common word)."""
    return sorted({v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= 6
                   and not k.upper().endswith(("_PATH", "_FILE", "_DIR"))}, key=len, reverse=True)


def mask_text(text: str) -> str:
    """Every URL in a text with its password masked, and every secret environment value replaced by ***."""
    if "://" in text:
        text = URL.sub(lambda m: mask(m[0]), text)
    for value in secret_values():
        if value in text:
            text = text.replace(value, "***")
    return text


def scrub_file(path, limit: int = 64 << 20) -> None:
    """A program's captured output (runs/NAME/logs/trial-N.out / .err), masked in place once it has ended:
    a program may print its own argv, where `${envvar:NAME}` put a secret. Files over `limit` are left."""
    try:
        if path.stat().st_size > limit:
            return
        text = path.read_bytes().decode("utf-8", "surrogateescape")
    except OSError:
        return
    masked = mask_text(text)
    if masked != text:
        path.write_bytes(masked.encode("utf-8", "surrogateescape"))


class MaskingStream(io.TextIOBase):
    """A text stream that masks every write before passing it on (isatty, fileno and flush pass through)."""

    def __init__(self, inner):
        self.inner = inner

    def write(self, s: str) -> int:
        self.inner.write(mask_text(s))
        return len(s)

    def flush(self) -> None:
        self.inner.flush()

    def fileno(self) -> int:
        return self.inner.fileno()

    def isatty(self) -> bool:
        return self.inner.isatty()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:
        return getattr(self.inner, "encoding", "utf-8")

    @property
    def errors(self) -> str | None:
        return getattr(self.inner, "errors", None)

    @property
    def buffer(self):
        return self.inner.buffer

    def reconfigure(self, **kwargs) -> None:
        self.inner.reconfigure(**kwargs)


def install() -> None:
    """The CLI's stdout and stderr mask what is written to them (once; before MLflow sets up its logging)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, MaskingStream):
            setattr(sys, name, MaskingStream(stream))
