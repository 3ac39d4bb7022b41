"""Read an embassy's manifests from its vault with the read-only identity (run inside the lab's
controller namespace: vault names resolve there alone).

    python -m embassy.replication.vaultread SPEC_JSON      -> JSON on stdout

SPEC: {"endpoint", "ca_file", "credentials", "bucket"}. Output: {"ok": true, "objects": [{"key",
"data" (base64), "lock_mode", "retain_until"}]} or {"ok": false, "error": "..."}.
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from embassy.lab.buckets import client
from embassy.replication.manifest import PREFIX


def read_manifests(spec: dict[str, Any]) -> dict[str, Any]:
    s3 = client(spec["endpoint"], spec["ca_file"], spec["credentials"])
    objects = []
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=spec["bucket"], Prefix=PREFIX):
        for item in page.get("Contents", []) or []:
            got = s3.get_object(Bucket=spec["bucket"], Key=item["Key"])
            objects.append({"key": item["Key"], "data": base64.b64encode(got["Body"].read()).decode(),
                            "lock_mode": got.get("ObjectLockMode"),
                            "retain_until": str(got.get("ObjectLockRetainUntilDate") or "")})
    return {"ok": True, "objects": objects}


def main(argv: list[str]) -> int:
    try:
        result = read_manifests(json.loads(argv[0]))
    except (BotoCoreError, ClientError, OSError, ValueError) as exc:
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
