"""Replication manifests: canonical JSON, Ed25519 signatures, and the hash chain.

A manifest is written at the end of each replication round, one per embassy, into that embassy's
vault under Object Lock. Its stored form is canonical JSON (sorted keys, no spaces, UTF-8, integers
only: any verifier gets the same bytes) of `{"manifest": BODY, "signature": {...}}`; the signature is
over the canonical bytes of BODY; the manifest's SHA-256 (what the next one links to) is over the
stored bytes. Like pgBackRest's info files, a manifest carries its format and is checked on every
load before anything trusts it.

Runs on home (signing) and on the controller (verifying): standard library and `cryptography` only.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

FORMAT = "embassy-manifest/1"
PREFIX = "manifests/"  # object keys in the vault: manifests/<round, 10 digits>.json


class ManifestError(Exception):
    """A manifest that cannot be trusted: the reason names what is wrong."""


def canonical(value: Any) -> bytes:
    """The one byte form of a JSON value: sorted keys, no whitespace, UTF-8; floats refused."""
    _no_floats(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _no_floats(value: Any) -> None:
    # Floats print differently across JSON implementations: a signed document holds none.
    if isinstance(value, float):
        raise ValueError("canonical JSON holds no floats (use integers or strings)")
    if isinstance(value, dict):
        for item in value.values():
            _no_floats(item)
    elif isinstance(value, list):
        for item in value:
            _no_floats(item)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def object_key(round_number: int) -> str:
    return f"{PREFIX}{round_number:010d}.json"


# --------------------------------------------------------------------------- keys


def public_key_pem(private: Ed25519PrivateKey) -> str:
    return private.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ManifestError("the manifest key is not an Ed25519 key")
    return key


def load_public_key(pem: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise ManifestError(f"the manifest public key is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ManifestError("the manifest public key is not an Ed25519 key")
    return key


def key_id(public: Ed25519PublicKey) -> str:
    """A short fingerprint: the SHA-256 of the raw public key, first 16 hex digits."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return sha256(raw)[:16]


# --------------------------------------------------------------------------- sign and verify


def sign(body: dict[str, Any], private: Ed25519PrivateKey) -> bytes:
    """The stored bytes of a manifest: its body and an Ed25519 signature over the body's canonical bytes."""
    if body.get("format") != FORMAT:
        raise ValueError(f"manifest body must have format {FORMAT}")
    signature = private.sign(canonical(body))
    return canonical({"manifest": body, "signature": {
        "alg": "ed25519", "key_id": key_id(private.public_key()), "value": base64.b64encode(signature).decode()}})


@dataclass(frozen=True)
class Verified:
    """A manifest whose bytes, format and signature were checked."""

    key: str
    body: dict[str, Any]
    sha256: str

    @property
    def round(self) -> int:
        return int(self.body["round"])


REQUIRED = {"format": str, "stack": str, "embassy": str, "round": int, "time": str, "registers": list}


def verify(key: str, data: bytes, public: Ed25519PublicKey) -> Verified:
    """Parse and check one stored manifest: canonical bytes, format, fields, signature by `public`."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"not JSON ({exc})") from None
    if not isinstance(doc, dict) or set(doc) != {"manifest", "signature"}:
        raise ManifestError("not a manifest (expected exactly 'manifest' and 'signature')")
    body, sig = doc["manifest"], doc["signature"]
    if not isinstance(body, dict) or not isinstance(sig, dict):
        raise ManifestError("not a manifest ('manifest' and 'signature' must be objects)")
    try:
        if canonical(doc) != data:
            raise ManifestError("bytes are not canonical JSON (the object was rewritten)")
    except ValueError as exc:
        raise ManifestError(str(exc)) from None
    if body.get("format") != FORMAT:
        raise ManifestError(f"unknown format {body.get('format')!r} (expected {FORMAT})")
    for field, kind in REQUIRED.items():
        if not isinstance(body.get(field), kind) or isinstance(body.get(field), bool):
            raise ManifestError(f"field '{field}' missing or not a {kind.__name__}")
    if sig.get("alg") != "ed25519" or not isinstance(sig.get("value"), str):
        raise ManifestError("signature is not an Ed25519 signature")
    if sig.get("key_id") != key_id(public):
        raise ManifestError(f"signed by another key ({sig.get('key_id')}, expected {key_id(public)})")
    try:
        public.verify(base64.b64decode(sig["value"], validate=True), canonical(body))
    except (InvalidSignature, ValueError):
        raise ManifestError("signature does not verify (the manifest was altered or forged)") from None
    if key != object_key(body["round"]):
        raise ManifestError(f"stored under the wrong name (round {body['round']} belongs at {object_key(body['round'])})")
    return Verified(key, body, sha256(data))


def verify_chain(objects: list[tuple[str, bytes]], public: Ed25519PublicKey, *, stack: str,
                 embassy: str) -> tuple[list[Verified], tuple[str, str] | None]:
    """Walk the chain from the first manifest to the newest: every signature and every link.

    Returns the manifests that verified, in order, and the first failure as (object, reason), or None.
    """
    chain: list[Verified] = []
    for key, data in sorted(objects):
        try:
            m = verify(key, data, public)
        except ManifestError as exc:
            return chain, (key, str(exc))
        if m.body["stack"] != stack or m.body["embassy"] != embassy:
            return chain, (key, f"belongs to stack '{m.body['stack']}', embassy '{m.body['embassy']}' "
                                f"(expected '{stack}', '{embassy}')")
        previous = chain[-1] if chain else None
        want = previous.sha256 if previous else None
        if m.body.get("previous_sha256") != want:
            what = f"the sha256 of {previous.key}" if previous else "none (the first manifest)"
            return chain, (key, f"chain broken: previous_sha256 is {m.body.get('previous_sha256')!r}, expected {what} "
                                "(a manifest was removed, replaced or reordered)")
        if previous and m.round <= previous.round:
            return chain, (key, f"round {m.round} does not follow round {previous.round}")
        chain.append(m)
    return chain, None
