"""Argument checks of `NatsSyncBackend`: URLs (and their redaction), bucket, replicas."""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import urlparse

from grelmicro.sync.errors import SyncSettingsValidationError

_URL_SCHEMES: Final = ("nats", "tls", "ws", "wss")
_BUCKET_RE: Final = re.compile(r"[A-Za-z0-9_-]+")
#: Stream names become directory names on the server's disk.
MAX_BUCKET_LENGTH: Final = 200
MAX_REPLICAS: Final = 5


def check_url(url: object, source: str) -> list[str]:
    """The server URLs in `url` (comma-separated), each checked."""
    if not isinstance(url, str) or not url.strip():
        msg = f"{source} must be a non-empty NATS URL string, got {url!r}"
        raise SyncSettingsValidationError(msg)
    servers: list[str] = []
    for part in url.split(","):
        server = part.strip()
        full = server if "://" in server else f"nats://{server}"
        try:
            parsed = urlparse(full)
            _ = parsed.port  # raises ValueError on a bad port
        except ValueError as exc:
            msg = f"Invalid NATS URL {redact(url)!r} (from {source}): {exc}"
            raise SyncSettingsValidationError(msg) from exc
        if parsed.scheme not in _URL_SCHEMES:
            msg = (
                f"Invalid NATS URL {redact(url)!r} (from {source}): the scheme "
                f"must be nats://, tls://, ws:// or wss://, got {parsed.scheme}://"
            )
            raise SyncSettingsValidationError(msg)
        if not parsed.hostname:
            msg = f"Invalid NATS URL {redact(url)!r} (from {source}): no host"
            raise SyncSettingsValidationError(msg)
        servers.append(full)
    return servers


def redact(url: str) -> str:
    """`url` (possibly comma-separated) without passwords."""
    parts = []
    for part in url.split(","):
        try:
            parsed = urlparse(part.strip())
            password = parsed.password
        except ValueError:
            parts.append("<invalid url>")
            continue
        if password is None:
            parts.append(part.strip())
        else:
            netloc = parsed.netloc.replace(f":{password}@", ":***@", 1)
            parts.append(parsed._replace(netloc=netloc).geturl())
    return ",".join(parts)


def check_bucket(bucket: object) -> str:
    """`bucket` if it is a valid KV bucket name."""
    if not isinstance(bucket, str) or not _BUCKET_RE.fullmatch(bucket):
        msg = (
            "bucket must be a NATS KV bucket name (letters, digits, '-' and "
            f"'_'), got {bucket!r}"
        )
        raise SyncSettingsValidationError(msg)
    if len(bucket) > MAX_BUCKET_LENGTH:
        msg = (
            f"bucket must be at most {MAX_BUCKET_LENGTH} characters, got "
            f"{len(bucket)} ({bucket[:40]!r}...)"
        )
        raise SyncSettingsValidationError(msg)
    return bucket


def check_replicas(replicas: object) -> int:
    """`replicas` if it is a valid replica count."""
    if (
        isinstance(replicas, bool)
        or not isinstance(replicas, int)
        or not 1 <= replicas <= MAX_REPLICAS
    ):
        msg = f"replicas must be an int from 1 to {MAX_REPLICAS}, got {replicas!r}"
        raise SyncSettingsValidationError(msg)
    return replicas
