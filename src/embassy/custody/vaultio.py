"""Custody bundles in a vault, over its S3 API (run where the target says the vault is reachable: in a lab, inside
its controller namespace, where vault names resolve alone). Written with the custody identity (the agent's in the
lab) under Object Lock COMPLIANCE; read with the reader identity.

    python -m embassy.custody.vaultio put SPEC_JSON < envelope.json   -> {"ok", "key", "lock_mode", "retain_until"}
    python -m embassy.custody.vaultio list SPEC_JSON                  -> {"ok", "objects": [...], "truncated"}
    python -m embassy.custody.vaultio locks SPEC_JSON                 -> {"ok", "objects": [...], "truncated"}

SPEC: a vaultaccess client spec ({"endpoint", "bucket", "ca_file", "addressing", "region", "credentials": {"file" |
"env"}}: never a secret, the credentials are read here) and "prefix" and "stack" | "key".
Each listed object: {"key", "data" (base64; absent when too large or not a bundle's key), "size", "lock_mode", "retain_until",
"last_modified"}. Bounded: at most MAX_OBJECTS keys are listed (then "truncated": true) and no object
larger than an envelope is downloaded, so a flood of objects planted by the vault's host cannot make a
reader loop or fill memory.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import sys
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from embassy.custody.seal import MAX_ENVELOPE_BYTES, MAX_VERSION
from embassy.errors import UserError
from embassy.vaultaccess import s3_client

PREFIX = "custody/"
MAX_OBJECTS = 2 * MAX_VERSION  # keys listed under a stack's custody prefix, at most


def object_key(stack: str, version: int) -> str:
    return f"{PREFIX}{stack}/bundle-v{version:04d}.json"


def version_of(key: str, stack: str) -> int | None:
    """The version a key names if it is a bundle's own key (1..MAX_VERSION), else None: at most MAX_VERSION keys of a
    vault ever get a header read or a signature checked, whatever the host planted."""
    head, tail = f"{PREFIX}{stack}/bundle-v", ".json"
    digits = key[len(head):-len(tail)] if key.startswith(head) and key.endswith(tail) else ""
    if len(digits) != 4 or not digits.isdigit() or not 1 <= int(digits) <= MAX_VERSION:
        return None
    return int(digits)


def _when(value: Any) -> str:
    return value.isoformat() if isinstance(value, dt.datetime) else str(value or "")


def put(spec: dict[str, Any], body: bytes) -> dict[str, Any]:
    s3 = s3_client(spec)
    # The bucket's default retention (COMPLIANCE, the embassy's days) locks it, as it locks the manifests:
    # the agent identity may write, never set or change a lock. The lock is read back and checked by the caller.
    s3.put_object(Bucket=spec["bucket"], Key=spec["key"], Body=body, ContentType="application/json")
    # Read back whole (an envelope is small), not a HEAD: the stored bytes are compared with what was sealed, the
    # lock headers come with them (the same s3:GetObject grant), and moto answers a GET to a role's session where it
    # refuses a HEAD (tests/unit/test_aws_assurance.py).
    head = s3.get_object(Bucket=spec["bucket"], Key=spec["key"])
    if head["Body"].read(MAX_ENVELOPE_BYTES + 1) != body:
        return {"ok": False, "error": f"{spec['key']}: the vault serves other bytes than were just stored"}
    return {"ok": True, "key": spec["key"], "lock_mode": head.get("ObjectLockMode"),
            "retain_until": _when(head.get("ObjectLockRetainUntilDate")), "last_modified": _when(head.get("LastModified"))}


def _listed(s3: Any, spec: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    items: list[dict[str, Any]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=spec["bucket"], Prefix=spec["prefix"]):
        for item in page.get("Contents", []) or []:
            if len(items) >= MAX_OBJECTS:
                return items, True
            items.append(item)
    return items, False


def list_bundles(spec: dict[str, Any], *, data: bool = True) -> dict[str, Any]:
    s3 = s3_client(spec)
    items, truncated = _listed(s3, spec)
    objects = []
    for item in items:
        entry: dict[str, Any] = {"key": item["Key"], "size": int(item.get("Size") or 0)}
        # Only a bundle's own key is downloaded (at most MAX_VERSION of them): anything else is listed, never read.
        if data and entry["size"] <= MAX_ENVELOPE_BYTES and version_of(item["Key"], spec["stack"]) is not None:
            got = s3.get_object(Bucket=spec["bucket"], Key=item["Key"])
            entry["data"] = base64.b64encode(got["Body"].read(MAX_ENVELOPE_BYTES + 1)).decode()
        else:
            got = s3.head_object(Bucket=spec["bucket"], Key=item["Key"])
        entry.update(lock_mode=got.get("ObjectLockMode"), retain_until=_when(got.get("ObjectLockRetainUntilDate")),
                     last_modified=_when(got.get("LastModified")))
        objects.append(entry)
    return {"ok": True, "objects": objects, "truncated": truncated}


def main(argv: list[str]) -> int:
    try:
        spec = json.loads(argv[1])
        result = put(spec, sys.stdin.buffer.read()) if argv[0] == "put" else list_bundles(spec, data=argv[0] == "list")
    except (BotoCoreError, ClientError, OSError, ValueError, IndexError, KeyError, UserError) as exc:
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
