"""S3 clients for lab vaults, and the bucket creation `lab up` runs inside the controller namespace.

Run only inside a lab namespace (`ip netns exec emb<id>-ctl python -m embassy.lab.buckets SPEC`):
the vault names resolve there alone. The lab CA is passed explicitly: these machines export
AWS_CA_BUNDLE and friends, which must not decide what a lab client trusts.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from botocore.exceptions import ClientError

from embassy.replication import vaultnet


def client(endpoint: str, ca_file: str, credentials_file: str) -> Any:
    with open(credentials_file) as fh:
        return vaultnet.client(endpoint, ca_file, json.load(fh))


def ensure_bucket(s3: Any, bucket: str, retention_days: int) -> None:
    """Create the bucket with Object Lock and a COMPLIANCE default retention (idempotent)."""
    try:
        s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    s3.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled",
        "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": retention_days}}})
    # SeaweedFS applies bucket configuration through a metadata cache: read it back until it shows.
    deadline = time.monotonic() + 20
    while True:
        got = s3.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
        rule = got.get("Rule", {}).get("DefaultRetention", {})
        if got.get("ObjectLockEnabled") == "Enabled" and rule.get("Mode") == "COMPLIANCE" and rule.get("Days") == retention_days:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"error: bucket {bucket}: object lock not as asked: {got}")
        time.sleep(0.2)


def main(argv: list[str]) -> int:
    for spec in json.loads(argv[0]):
        s3 = client(spec["endpoint"], spec["ca_file"], spec["credentials"])
        ensure_bucket(s3, spec["bucket"], int(spec["retention_days"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
