"""API keys, for every protocol: where a client puts its key and how it is compared.

A key comes as `authorization: Bearer <key>` or `x-api-key: <key>`, HTTP headers or gRPC metadata alike, and
is compared in constant time against every configured key.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable


def offered_key(get: Callable[[str], str | bytes | None]) -> bytes:
    """The key a request offers (b"" for none); `get` looks up one lower-case header or metadata key."""
    auth = get("authorization") or ""
    if isinstance(auth, bytes):
        auth = auth.decode("latin-1")
    scheme, _, credentials = auth.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip().encode()
    key = get("x-api-key") or ""
    return key if isinstance(key, bytes) else key.encode()


def key_matches(offered: bytes, keys: list[bytes]) -> bool:
    # Compare against every key without stopping early: timing reveals neither a key nor which one matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(offered, key)
    return matched and bool(offered)
