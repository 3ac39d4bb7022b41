"""A bundle sealed with AES-256-GCM under a key derived for it alone; the header is signed by home.

The stored object (the envelope) is JSON: a plaintext header (format, stack, embassy, version, the
shares' SLIP-39 identifier, threshold, officials, salt, nonce), the ciphertext, and an Ed25519
signature by home's manifest key over the header and the ciphertext's SHA-256.

Two protections, for two moments:
- the header is the AES-GCM associated data, and each bundle's key is HKDF(bundle key, salt,
  stack/embassy/version) derived with the identity the *caller expects* (never the header's): a bundle
  moved to another embassy, stack or version does not open, and the opened content's identity is
  compared again before anything is used;
- the signature lets a controller trust a header *without* the officials' key: `custody init|rotate`
  read versions and identifiers only from headers whose signature verifies, so a header forged by a
  vault's host cannot block init, pick the next version or hide the newest. A restore decides from the
  shares themselves (identifier, threshold) and checks the signature of the bundle it opens.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import os
from collections.abc import Callable
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from embassy.custody.bundle import FORMAT, Bundle
from embassy.errors import BundleInvalid, SignatureInvalid
from embassy.replication.manifest import ManifestError, canonical, load_public_key

# Bounds on everything a header or an envelope can claim: a forged one cannot make a reader loop or allocate.
MAX_VERSION = 9999  # object keys carry 4 digits; one version per rotation
MAX_IDENTIFIER = 2**15 - 1  # SLIP-39's 15-bit identifier
MAX_OFFICIALS = 16  # SLIP-39's limit on a group's members
MAX_ENVELOPE_BYTES = 64 * 1024  # a real envelope is ~5 KB
SIGNED_PREFIX = b"embassy-custody-envelope\0"  # domain separation: never a valid manifest signature, nor the reverse

Signer = Callable[[bytes], bytes]  # bytes -> Ed25519 signature by home's manifest key


class Header(BaseModel):
    """The header as stored: every field typed and bounded, nothing else accepted."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    format: str = Field(pattern=r"^embassy-custody-bundle/2$")  # = FORMAT
    stack: str = Field(min_length=1, max_length=64)
    embassy: str = Field(min_length=1, max_length=64)
    version: int = Field(ge=1, le=MAX_VERSION)
    created: str = Field(max_length=64)
    identifier: int = Field(ge=0, le=MAX_IDENTIFIER)
    threshold: int = Field(ge=1, le=MAX_OFFICIALS)
    officials: int = Field(ge=1, le=MAX_OFFICIALS)
    salt: str = Field(max_length=64)
    nonce: str = Field(max_length=64)


class Signature(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    alg: Literal["ed25519"]
    value: str = Field(max_length=128)


HEADER_FIELDS = tuple(Header.model_fields)


def _derive(key: bytes, salt: bytes, stack: str, embassy: str, version: int) -> bytes:
    info = f"embassy-custody/{stack}/{embassy}/{version}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(key)


def signed_bytes(header: dict[str, Any], ciphertext: str) -> bytes:
    """What home signs: the header and the ciphertext's digest, canonical, behind a custody-only prefix."""
    digest = hashlib.sha256(ciphertext.encode()).hexdigest()
    return SIGNED_PREFIX + canonical({"header": header, "ciphertext_sha256": digest})


def seal(bundle: Bundle, key: bytes, *, identifier: int, threshold: int, officials: int, sign: Signer) -> dict[str, Any]:
    salt, nonce = os.urandom(16), os.urandom(12)
    header = Header(format=FORMAT, stack=bundle.stack, embassy=bundle.embassy, version=bundle.version,
                    created=bundle.created, identifier=identifier, threshold=threshold, officials=officials,
                    salt=base64.b64encode(salt).decode(), nonce=base64.b64encode(nonce).decode()).model_dump()
    aead = AESGCM(_derive(key, salt, bundle.stack, bundle.embassy, bundle.version))
    ciphertext = base64.b64encode(aead.encrypt(nonce, canonical(bundle.model_dump()), canonical(header))).decode()
    signature = base64.b64encode(sign(signed_bytes(header, ciphertext))).decode()
    return {**header, "ciphertext": ciphertext, "signature": {"alg": "ed25519", "value": signature}}


def parse_envelope(data: bytes) -> dict[str, Any] | str:
    """The stored bytes as a JSON object, or the reason they are not one (size, nesting, duplicate keys, type)."""
    if len(data) > MAX_ENVELOPE_BYTES:
        return f"{len(data)} bytes, more than an envelope's {MAX_ENVELOPE_BYTES}"

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r}")
        return dict(pairs)

    try:
        got = json.loads(data, object_pairs_hook=unique)
    except RecursionError:
        return "nested too deeply to be an envelope"
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return f"not JSON: {str(exc)[:120]}"
    return got if isinstance(got, dict) else f"a JSON {type(got).__name__}, not an object"


def header_of(envelope: dict[str, Any], name: str) -> Header:
    """The envelope's header, checked for shape and bounds (not authenticity: `authenticate` or `unseal` prove that)."""
    if not isinstance(envelope, dict):
        raise BundleInvalid(f"{name}: not a custody envelope (a JSON {type(envelope).__name__})")
    extra = sorted(set(envelope) - {*HEADER_FIELDS, "ciphertext", "signature"})
    missing = [f for f in (*HEADER_FIELDS, "ciphertext", "signature") if f not in envelope]
    if missing or extra or envelope.get("format") != FORMAT:
        what = (f"missing {', '.join(missing)}" if missing else f"unknown fields {', '.join(extra)[:200]}" if extra
                else f"format {str(envelope.get('format'))[:60]!r}")
        raise BundleInvalid(f"{name}: not a custody bundle of format {FORMAT} ({what})")
    if not isinstance(envelope["ciphertext"], str) or len(envelope["ciphertext"]) > MAX_ENVELOPE_BYTES:
        raise BundleInvalid(f"{name}: its ciphertext is not a bounded base64 string")
    try:
        return Header.model_validate({f: envelope[f] for f in HEADER_FIELDS})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise BundleInvalid(f"{name}: header field {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


@functools.lru_cache(maxsize=8)
def _public(pem: str) -> Ed25519PublicKey:
    return load_public_key(pem)


def authenticate(envelope: dict[str, Any], name: str, public_pem: str) -> Header:
    """The header, if home's manifest key signed it and the ciphertext; SignatureInvalid or BundleInvalid otherwise."""
    header = header_of(envelope, name)
    try:
        signature = Signature.model_validate(envelope["signature"])
        _public(public_pem).verify(base64.b64decode(signature.value, validate=True),
                      signed_bytes(header.model_dump(), envelope["ciphertext"]))
    except (ValidationError, InvalidSignature, binascii.Error, ValueError, ManifestError):
        raise SignatureInvalid(f"{name}: its header is not signed by home's manifest key (forged, or altered after "
                               "sealing): nothing of it is read") from None
    return header


def unseal(envelope: dict[str, Any], key: bytes, name: str, *, stack: str, embassy: str) -> Bundle:
    """The bundle of `stack`/`embassy` (the caller's, never the header's), or BundleInvalid naming the object and why."""
    header = header_of(envelope, name)
    if (header.stack, header.embassy) != (stack, embassy):
        raise BundleInvalid(f"{name}: holds the bundle of embassy '{header.embassy}' (stack {header.stack}), not "
                            f"{embassy}'s: another embassy's bundle opens nowhere else",
                            "this vault's host moved another embassy's bundle here: restore at another embassy and "
                            "investigate this vault")
    try:
        salt, nonce = base64.b64decode(header.salt, validate=True), base64.b64decode(header.nonce, validate=True)
        sealed = base64.b64decode(envelope["ciphertext"], validate=True)
        # Derived with the expected identity: a bundle sealed for another embassy or stack gets a wrong key.
        aead = AESGCM(_derive(key, salt, stack, embassy, header.version))
        plain = aead.decrypt(nonce, sealed, canonical(header.model_dump()))
    except (InvalidTag, ValueError, TypeError, binascii.Error):
        raise BundleInvalid(f"{name}: does not decrypt (AES-GCM tag): the bundle or its header was altered, "
                            "or the shares are of another bundle") from None
    try:
        bundle = Bundle.model_validate_json(plain)
    except ValidationError as exc:
        raise BundleInvalid(f"{name}: decrypted content is not a bundle: {exc.errors()[0]['msg']}") from None
    if (bundle.stack, bundle.embassy, bundle.version) != (stack, embassy, header.version):
        raise BundleInvalid(f"{name}: sealed content names {bundle.stack}/{bundle.embassy} v{bundle.version}, not "
                            f"{stack}/{embassy} v{header.version}: refused before any of it is used")
    return bundle
