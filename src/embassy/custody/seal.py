"""A bundle sealed with AES-256-GCM under a key derived for it alone; the header is authenticated too.

The stored object is JSON: a plaintext header (format, stack, embassy, version, the shares' SLIP-39
identifier, threshold) and the ciphertext. The header is the associated data, so a bundle moved to
another stack, embassy or version, or given another identifier, does not open. Each bundle's key is
HKDF(bundle key, a fresh random salt, stack/embassy/version): one split key, a fresh key per bundle.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import ValidationError

from embassy.custody.bundle import FORMAT, Bundle
from embassy.errors import BundleInvalid
from embassy.replication.manifest import canonical

HEADER_FIELDS = ("format", "stack", "embassy", "version", "created", "identifier", "threshold", "officials", "salt",
                 "nonce")


def _derive(key: bytes, salt: bytes, stack: str, embassy: str, version: int) -> bytes:
    info = f"embassy-custody/{stack}/{embassy}/{version}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(key)


def seal(bundle: Bundle, key: bytes, *, identifier: int, threshold: int, officials: int) -> dict[str, Any]:
    salt, nonce = os.urandom(16), os.urandom(12)
    header = {"format": FORMAT, "stack": bundle.stack, "embassy": bundle.embassy, "version": bundle.version,
              "created": bundle.created, "identifier": identifier, "threshold": threshold, "officials": officials,
              "salt": base64.b64encode(salt).decode(), "nonce": base64.b64encode(nonce).decode()}
    aead = AESGCM(_derive(key, salt, bundle.stack, bundle.embassy, bundle.version))
    sealed = aead.encrypt(nonce, canonical(bundle.model_dump()), canonical(header))
    return {**header, "ciphertext": base64.b64encode(sealed).decode()}


def header_of(envelope: dict[str, Any], name: str) -> dict[str, Any]:
    """The envelope's header, checked for shape (not authenticity: only `unseal` proves that)."""
    missing = [f for f in (*HEADER_FIELDS, "ciphertext") if f not in envelope]
    if missing or envelope.get("format") != FORMAT:
        raise BundleInvalid(f"{name}: not a custody bundle of format {FORMAT} (missing {', '.join(missing) or 'format'})")
    return {f: envelope[f] for f in HEADER_FIELDS}


def unseal(envelope: dict[str, Any], key: bytes, name: str) -> Bundle:
    """The bundle, or BundleInvalid naming the object: a wrong key, an edited header or ciphertext."""
    header = header_of(envelope, name)
    try:
        salt, nonce = base64.b64decode(header["salt"]), base64.b64decode(header["nonce"])
        sealed = base64.b64decode(envelope["ciphertext"])
        aead = AESGCM(_derive(key, salt, str(header["stack"]), str(header["embassy"]), int(header["version"])))
        plain = aead.decrypt(nonce, sealed, canonical(header))
    except (InvalidTag, ValueError, TypeError):
        raise BundleInvalid(f"{name}: does not decrypt (AES-GCM tag): the bundle or its header was altered, "
                            "or the shares are of another bundle") from None
    try:
        bundle = Bundle.model_validate_json(plain)
    except ValidationError as exc:
        raise BundleInvalid(f"{name}: decrypted content is not a bundle: {exc.errors()[0]['msg']}") from None
    if (bundle.stack, bundle.embassy, bundle.version) != (header["stack"], header["embassy"], header["version"]):
        raise BundleInvalid(f"{name}: sealed content names {bundle.stack}/{bundle.embassy} v{bundle.version}, "
                            "not its header's")
    return bundle
