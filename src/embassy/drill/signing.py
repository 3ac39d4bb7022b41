"""Ed25519 signatures of drill reports, and the controller-side key that makes them.

The key is the controller's, generated on first use in a folder the caller names (0700; the private
key 0600, PKCS#8 PEM; the public key beside it for auditors). Signatures cover canonical JSON (one form for
the whole package: replication/manifest.canonical and canonical_json), so that every verifier gets the same bytes
whatever indentation a file was written with. Parsing refuses what could make two readers see two documents
(a duplicate key, NaN or Infinity).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from embassy.errors import KeyInvalid
from embassy.replication import manifest
from embassy.replication.privatefile import create_private

ALGORITHM = "ed25519"
PRIVATE_KEY_FILE = "report-signing.key"
PUBLIC_KEY_FILE = "report-signing.pub"


class JsonRefused(ValueError):
    """JSON that parses to different documents in different readers: refused."""


def _no_constant(name: str) -> Any:
    raise JsonRefused(f"{name} is not a JSON number")


def strict_loads(text: str | bytes) -> Any:
    """json.loads that refuses duplicate keys, NaN and Infinity (raises JsonRefused or ValueError)."""
    return json.loads(text, object_pairs_hook=manifest.unique_keys, parse_constant=_no_constant)


def public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(key: Ed25519PublicKey) -> str:
    """`sha256:<hex>` of the raw 32-byte public key: what an auditor compares."""
    return "sha256:" + manifest.sha256(public_bytes(key))


def public_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def signing_key(folder: Path) -> Ed25519PrivateKey:
    """The controller's report-signing key in `folder`, created on first use (0600, never elsewhere)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / PRIVATE_KEY_FILE
    if not path.exists():
        new = Ed25519PrivateKey.generate()
        pem = new.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        create_private(path, pem)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise KeyInvalid(f"signing key {path} is readable by others (mode {mode:o})",
                         f"run `chmod 600 {path}`; reports it signed may have been forged by whoever read it: "
                         "move it away to make a new key, and give auditors the new public key")
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError as exc:
        raise KeyInvalid(f"signing key {path} cannot be read: {exc}",
                         f"move {path} away; a new key is made on next use") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise KeyInvalid(f"signing key {path} is not an Ed25519 key", f"move {path} away; a new key is made on next use")
    key = loaded
    pub = folder / PUBLIC_KEY_FILE
    if not pub.exists() or pub.read_text() != public_pem(key.public_key()):
        pub.write_text(public_pem(key.public_key()))
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (as signing_key writes it), or a KeyInvalid (exit 2)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyInvalid(f"cannot read public key {path}: {exc.strerror}",
                         f"give the {PUBLIC_KEY_FILE} of the controller that signed the report") from None
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise KeyInvalid(f"{path} is not a PEM public key",
                         f"give the {PUBLIC_KEY_FILE} of the controller that signed the report") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyInvalid(f"{path} is not an Ed25519 public key", f"give the {PUBLIC_KEY_FILE} that signed the report")
    return key


def sign(key: Ed25519PrivateKey, statement: dict[str, Any]) -> str:
    """Base64 of the Ed25519 signature over the statement's canonical JSON."""
    return base64.b64encode(key.sign(manifest.canonical(statement))).decode()


def signature_valid(key: Ed25519PublicKey, statement: dict[str, Any], signature: str) -> bool:
    try:
        key.verify(base64.b64decode(signature, validate=True), manifest.canonical(statement))
    except (InvalidSignature, ValueError):
        return False
    return True
