"""Custody bundles in a vault, over its S3 API (run inside the lab's controller namespace: vault names
resolve there alone). Written with the agent identity under Object Lock COMPLIANCE; read with the
reader identity.

    python -m embassy.custody.vaultio put SPEC_JSON < envelope.json   -> {"ok", "key", "lock_mode", "retain_until"}
    python -m embassy.custody.vaultio list SPEC_JSON                  -> {"ok", "objects": [{"key", "data", "lock_mode"}]}

SPEC: {"endpoint", "ca_file", "credentials", "bucket", "prefix" | "key"}.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from embassy.lab.buckets import client

PREFIX = "custody/"


def object_key(stack: str, version: int) -> str:
    return f"{PREFIX}{stack}/bundle-v{version:04d}.json"


def put(spec: dict[str, Any], body: bytes) -> dict[str, Any]:
    s3 = client(spec["endpoint"], spec["ca_file"], spec["credentials"])
    # The bucket's default retention (COMPLIANCE, the embassy's days) locks it, as it locks the manifests:
    # the agent identity may write, never set or change a lock.
    s3.put_object(Bucket=spec["bucket"], Key=spec["key"], Body=body, ContentType="application/json")
    head = s3.head_object(Bucket=spec["bucket"], Key=spec["key"])
    return {"ok": True, "key": spec["key"], "lock_mode": head.get("ObjectLockMode"),
            "retain_until": str(head.get("ObjectLockRetainUntilDate") or "")}


def list_bundles(spec: dict[str, Any]) -> dict[str, Any]:
    s3 = client(spec["endpoint"], spec["ca_file"], spec["credentials"])
    objects = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=spec["bucket"], Prefix=spec["prefix"]):
        for item in page.get("Contents", []) or []:
            got = s3.get_object(Bucket=spec["bucket"], Key=item["Key"])
            objects.append({"key": item["Key"], "data": got["Body"].read().decode(),
                            "lock_mode": got.get("ObjectLockMode")})
    return {"ok": True, "objects": objects}


def main(argv: list[str]) -> int:
    try:
        spec = json.loads(argv[1])
        result = put(spec, sys.stdin.buffer.read()) if argv[0] == "put" else list_bundles(spec)
    except (BotoCoreError, ClientError, OSError, ValueError, IndexError, KeyError) as exc:
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
