"""Read an embassy's vault with the read-only identity (run where the target says the vault is reachable: in a
lab, inside its controller namespace, where vault names resolve alone). Everything the vault says is bounded
here; the caller parses it as untrusted.

    python -m embassy.replication.vaultread SPEC_JSON      -> JSON on stdout

SPEC: a vaultaccess client spec {"endpoint", "bucket", "ca_file", "addressing", "region", "credentials": {"file"
| "env"}} (never a secret: credentials are read here) and either nothing (the manifests) or "heads":
{"prefixes": [...], "keys": [...]} (the lock of every object under those prefixes, and of those keys).
Output: {"ok": true, "objects": [{"key", "size", "data" (base64; absent when over the bound), "lock_mode",
"retain_until", "last_modified"[, "unlisted": true]}]} or {"ok": false, "error": "..."}. Of the manifests, the
round after the newest listed one is also read if the vault serves it unlisted (marked "unlisted").
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from embassy.errors import UserError
from embassy.replication import vaultnet
from embassy.replication.manifest import MAX_BYTES, PREFIX, object_key
from embassy.replication.vaultnet import Bounded, listed, read_bounded
from embassy.vaultaccess import s3_client

# A host chooses how many objects it lists and how large each is: the reader stops at these bounds and
# says so, rather than filling the controller's memory (a round a minute for 10 years is 5.3 million manifests:
# more than that under manifests/ is not a chain).
MAX_OBJECTS = 6_000_000
MAX_TOTAL_BYTES = 512 << 20
MAX_HEADS = 50_000
HEAD_THREADS = 8


def _lock(got: dict[str, Any]) -> dict[str, Any]:
    until = got.get("ObjectLockRetainUntilDate")
    modified = got.get("LastModified")
    return {"lock_mode": got.get("ObjectLockMode"), "retain_until": until.isoformat() if until else None,
            "last_modified": modified.isoformat() if modified else None}


def bounded_read(got: dict[str, Any], listed_size: int = 0, data: bytes | None = None) -> dict[str, Any]:
    """An object's size, lock and bytes, at most MAX_BYTES of them: one byte past the bound is read to see that it
    is over, and then no data is kept (the caller reports the size, never parses a part). The listing's size is the
    host's word too: whichever says more, the listing or the read, is the size."""
    if data is None:  # not read yet (vaultnet.read_bounded reads the same MAX_BYTES + 1)
        data = got["Body"].read(MAX_BYTES + 1)
    out: dict[str, Any] = {"size": max(listed_size, len(data)), **_lock(got)}
    if out["size"] <= MAX_BYTES:
        out["data"] = base64.b64encode(data).decode()
    return out


READABLE = (PREFIX, "restore-tests/")  # spec "prefix": the manifests (default) or the restore-test records


def read_manifests(spec: dict[str, Any]) -> dict[str, Any]:
    s3 = s3_client(spec)
    objects = []
    prefix = spec.get("prefix", PREFIX)
    if prefix not in READABLE:
        raise ValueError(f"prefix {prefix!r} is not one of {READABLE}")
    items = listed(s3, spec["bucket"], prefix, MAX_OBJECTS)
    for item, got, data in read_bounded(s3, spec["bucket"], items, MAX_BYTES, MAX_TOTAL_BYTES):
        entry: dict[str, Any] = {"key": item["Key"], "size": int(item.get("Size") or 0)}
        if got is not None:
            entry.update(bounded_read(got, entry["size"], data))
        objects.append(entry)
    if prefix == PREFIX:
        hidden = _next_unlisted(s3, spec["bucket"], [i["Key"] for i in items])
        if hidden is not None:
            objects.append(hidden)
    return {"ok": True, "objects": objects}


ROUND_KEY = re.compile(rf"{re.escape(PREFIX)}(\d{{10}})\.json")


def _next_unlisted(s3: Any, bucket: str, keys: list[str]) -> dict[str, Any] | None:
    """The key of the round after the newest listed one, if the vault serves it although its listing leaves it out.

    A vault can serve an object on GET that no listing shows: SeaweedFS does so for an object written below S3
    once a read has "healed" its version folder (README: "`verify` and a manifest the vault serves but does not
    list"). Home's next round then finds the key taken and writes nothing there, and the chain the listing shows
    looks whole: the one key that decides either is read here too, marked unlisted (one GET, bounded as the others)."""
    rounds = [int(m.group(1)) for k in keys if (m := ROUND_KEY.fullmatch(k))]
    key = object_key(max(rounds, default=0) + 1)
    try:
        got = s3.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    read = bounded_read(got)
    # Home may have written that round since the listing: listed now, it is only newer than this read, not hidden.
    if key in {i["Key"] for i in listed(s3, bucket, PREFIX, MAX_OBJECTS)}:
        return None
    return {"key": key, **read, "unlisted": True}


def read_heads(spec: dict[str, Any]) -> dict[str, Any]:
    """The lock of every object under the prefixes and of the keys (HEAD: no data read)."""
    s3 = s3_client(spec)
    keys = [str(k) for k in spec["heads"].get("keys", [])]
    for prefix in spec["heads"].get("prefixes", []):
        keys += [i["Key"] for i in listed(s3, spec["bucket"], str(prefix), MAX_HEADS)]
    if len(keys) > MAX_HEADS:
        raise Bounded(f"more than {MAX_HEADS} objects to check")

    def head(key: str) -> dict[str, Any]:
        try:
            got = s3.head_object(Bucket=spec["bucket"], Key=key)
        except ClientError as exc:
            return {"key": key, "missing": str(exc.response.get("Error", {}).get("Code", "error"))}
        return {"key": key, "size": int(got.get("ContentLength") or 0), **_lock(got)}

    with ThreadPoolExecutor(HEAD_THREADS) as pool:
        return {"ok": True, "objects": list(pool.map(head, dict.fromkeys(keys)))}


PROBE_SECONDS = vaultnet.PROBE_SECONDS  # as boto's connect timeout
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


class Silent(Exception):
    """The vault's endpoint accepted no TCP connection within PROBE_SECONDS."""


def probe(endpoint: str, timeout: float = PROBE_SECONDS) -> None:
    """Silent unless the endpoint accepts a TCP connection: a cut-off vault costs this one attempt (about 3 s until
    "no route to host"), where boto's retried connects and reads cost several. Through a proxy boto alone decides."""
    if any(os.environ.get(v) for v in PROXY_VARIABLES):
        return
    host, port = vaultnet.address(endpoint)
    exc = vaultnet.refusal((host, port), timeout)
    if exc is not None:
        raise Silent(f"{host}:{port} accepts no connection within {timeout:g} s ({type(exc).__name__}: {exc})")


def main(argv: list[str]) -> int:
    try:
        spec = json.loads(argv[0])
        probe(spec["endpoint"])
        result = read_heads(spec) if "heads" in spec else read_manifests(spec)
    except (BotoCoreError, ClientError, OSError, ValueError, KeyError, Bounded, Silent, UserError) as exc:
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
