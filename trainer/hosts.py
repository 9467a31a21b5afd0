"""Operator allowlists of the hosts a run may reach (remote rewards, MLflow servers): one check for every caller.

An entry is `host` (every port) or `host:port`, compared without case. Only http(s) URLs with a host name qualify;
anything else (file://, a bare path, no host) is refused whatever the list says.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

SCHEMES = ("http", "https")


def url_host(url: str) -> str:
    """`host[:port]` of `url`, lower-cased ('' when it has none or the port is malformed)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port that is not a number, an unbalanced IPv6 bracket
        return ""
    host = (parts.hostname or "").lower()
    return f"{host}:{port}" if host and port else host


def host_allowed(url: str, allowed: Sequence[str]) -> bool:
    """True when `url`'s host (with or without its port) is an entry of `allowed`."""
    host = url_host(url)
    entries = {a.strip().lower() for a in allowed}
    return bool(host) and (host in entries or host.rsplit(":", 1)[0] in entries)


def refused_url(url: str, allowed: Sequence[str], *, setting: str) -> str | None:
    """Why a run may not reach `url` (None if it may): the scheme, a missing host, or a host not in `allowed`.

    `setting` names the operator's list in the message (e.g. "REMOTE_REWARD_HOSTS").
    """
    scheme = urlsplit(url).scheme.lower() if isinstance(url, str) else ""
    if scheme not in SCHEMES:
        return f"URL must start with http:// or https://, got scheme {scheme or 'none'!r}"
    host = url_host(url)
    if not host:
        return "URL has no host name"
    if not host_allowed(url, allowed):
        listed = ", ".join(allowed) if allowed else "empty: the operator has not allowed any host"
        return f"host {host!r} is not in {setting} ({listed})"
    return None
