"""Signed, hash-chained manifests for the unit tests, built the way home builds them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from embassy.replication import manifest

Body = Callable[[int, str | None, str], dict[str, Any]]


def signed_chain(n: int, body: Body, key: Ed25519PrivateKey, embassy: str = "de") -> list[tuple[str, bytes]]:
    """Rounds 1..n as (object key, signed bytes), each naming the previous one's sha256."""
    out, previous = [], None
    for i in range(1, n + 1):
        data = manifest.sign(body(i, previous, embassy), key)
        out.append((manifest.object_key(i), data))
        previous = manifest.sha256(data)
    return out
