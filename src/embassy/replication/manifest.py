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
import binascii
import dataclasses
import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

FORMAT = "embassy-manifest/1"
PREFIX = "manifests/"  # object keys in the vault: manifests/<round, 10 digits>.json
# Bounds on what a vault can make a verifier parse (a host nation chooses every byte it serves). A manifest
# of 3 registers is ~3 KB; 1 MiB holds hundreds. A signed manifest is never nested deeper than 8.
MAX_BYTES = 1 << 20
MAX_DEPTH = 16


class ManifestError(Exception):
    """A manifest that cannot be trusted: the reason names what is wrong."""


def canonical(value: Any) -> bytes:
    """The one byte form of a signed JSON value: canonical_json, floats refused."""
    _no_floats(value)
    return canonical_json(value)


def canonical_json(value: Any) -> bytes:
    """The one byte form of a JSON value that every signer and verifier computes: sorted keys, no whitespace,
    UTF-8, no NaN. Floats are allowed here for what only this code digests (a drill's report.json holds measured
    seconds); whatever is signed goes through canonical, which refuses them."""
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
    # The stored bytes that verified: a report re-checks their signature.
    data: bytes = dataclasses.field(default=b"", repr=False, compare=False)

    @property
    def round(self) -> int:
        return int(self.body["round"])


REQUIRED = {"format": str, "stack": str, "embassy": str, "round": int, "time": str, "registers": list}


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers may keep different copies of a duplicated key: a signed document holds each key once.
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise ValueError(f"duplicate key {name[:40]!r}")
        out[name] = value
    return out


def _depth(value: Any, limit: int) -> int:
    """How deeply `value` nests (iterative: a hostile nesting cannot exhaust the stack here)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if deepest > limit:
                return deepest
            todo.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse_json(data: bytes, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """Untrusted JSON bytes, bounded: size, strict UTF-8, unique keys, nesting; ValueError naming what is wrong.

    Nothing else escapes: RecursionError (deep nesting), MemoryError (bounded by max_bytes), a huge integer
    (Python refuses one of more than 4300 digits) all become ValueError."""
    if len(data) > max_bytes:
        raise ValueError(f"{len(data)} bytes, more than the {max_bytes} a manifest may have")
    try:
        text = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 (byte {exc.start})") from None
    try:
        doc = json.loads(text, object_pairs_hook=unique_keys)
    except RecursionError:
        raise ValueError(f"nested deeper than {max_depth}") from None
    except ValueError as exc:
        raise ValueError(str(exc)[:200]) from None
    if _depth(doc, max_depth) > max_depth:
        raise ValueError(f"nested deeper than {max_depth}")
    return doc


def _check_body(body: dict[str, Any]) -> None:
    """The shape a verifier relies on, checked once signed (a signed body is home's, yet checked: no KeyError later)."""
    try:
        parse_time(body["time"])
    except ValueError:
        raise ManifestError(f"field 'time' is not an ISO 8601 time: {str(body['time'])[:40]!r}") from None
    if not (body.get("previous_sha256") is None or isinstance(body.get("previous_sha256"), str)):
        raise ManifestError("field 'previous_sha256' is not a string")
    for i, reg in enumerate(body["registers"]):
        if not isinstance(reg, dict) or not isinstance(reg.get("name"), str) or reg.get("kind") not in ("postgres", "files"):
            raise ManifestError(f"registers[{i}] is not a register (name, kind postgres|files)")
        for field, kind in (("wal", dict), ("digest", dict), ("backup_label", str), ("snapshot_id", str),
                            ("repo_path", str), ("repository", str), ("archived_lsn", str)):
            if reg.get(field) is not None and not isinstance(reg[field], kind):
                raise ManifestError(f"registers[{i}].{field} is not a {kind.__name__}")
        wal = reg.get("wal") or {}
        if any(wal.get(end) is not None and not isinstance(wal[end], str) for end in ("first", "last")):
            raise ManifestError(f"registers[{i}].wal names no segment")


def parse_time(text: Any) -> dt.datetime:
    """A manifest's ISO 8601 time (Z or an offset; none is UTC); ValueError otherwise."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def verify(key: str, data: bytes, public: Ed25519PublicKey) -> Verified:
    """Parse and check one stored manifest: canonical bytes, format, fields, signature by `public`.

    Any input raises ManifestError and nothing else (bounded size and nesting, strict UTF-8, unique keys)."""
    try:
        doc = parse_json(data)
    except ValueError as exc:
        raise ManifestError(f"not JSON of a manifest ({exc})") from None
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
    except (InvalidSignature, ValueError, binascii.Error):
        raise ManifestError("signature does not verify (the manifest was altered or forged)") from None
    if key != object_key(body["round"]):
        raise ManifestError(f"stored under the wrong name (round {body['round']} belongs at {object_key(body['round'])})")
    _check_body(body)
    return Verified(key, body, sha256(data), data)


def verify_chain(objects: list[tuple[str, bytes]], public: Ed25519PublicKey, *, stack: str,
                 embassy: str) -> tuple[list[Verified], tuple[str, str] | None]:
    """Walk the chain from the first manifest to the newest: every signature and every link.

    Returns the manifests that verified, in order, and the first failure as (object, reason), or None.
    Every object under manifests/ must be a manifest of this chain: anything else is its failure.
    """
    chain: list[Verified] = []
    seen: set[str] = set()
    for key, data in sorted(objects, key=lambda o: o[0]):
        if key in seen:
            return chain, (key, "listed twice by the vault")
        seen.add(key)
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


def newest_signed(objects: list[tuple[str, bytes]], public: Ed25519PublicKey, *, stack: str) -> Verified | None:
    """The newest manifest of `stack` whose own signature verifies, chain or not: home signed it, so the state
    reached that round by then, whatever else the vault holds (evidence for another vault's freshness)."""
    newest: Verified | None = None
    for key, data in objects:
        try:
            m = verify(key, data, public)
        except ManifestError:
            continue
        if m.body["stack"] == stack and (newest is None or m.round > newest.round):
            newest = m
    return newest
