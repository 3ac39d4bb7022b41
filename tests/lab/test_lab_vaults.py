"""Lab vaults: real SeaweedFS, Object Lock COMPLIANCE enforced for the agent and the admin alike."""

from __future__ import annotations

import json
import secrets
import stat
from pathlib import Path

import pytest
from cryptography import x509

from embassy.lab.state import LabState
from tests.lab.conftest import in_controller_python

# Runs inside the controller namespace: every attempt is recorded as "allowed" or the S3 error code.
PROBE = r"""
import datetime as dt, json, sys
from botocore.exceptions import ClientError
from embassy.lab import buckets

spec = json.loads(sys.argv[1])
bucket, key = spec["bucket"], spec["key"]
agent = buckets.client(spec["endpoint"], spec["ca_file"], spec["agent"])
admin = buckets.client(spec["endpoint"], spec["ca_file"], spec["admin"])
out = {}

def attempt(name, call):
    try:
        call()
        out[name] = "allowed"
    except ClientError as exc:
        out[name] = exc.response["Error"]["Code"]

put = agent.put_object(Bucket=bucket, Key=key, Body=b"register page 1")
vid = put["VersionId"]
head = agent.head_object(Bucket=bucket, Key=key, VersionId=vid)
out["lock_mode"] = head.get("ObjectLockMode")
until = head["ObjectLockRetainUntilDate"]
out["retain_days"] = (until - dt.datetime.now(dt.timezone.utc)).days

def batch_delete(s3):
    # DeleteObjects answers 200 and lists refusals in Errors: turn a refusal into the error it is.
    res = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": key, "VersionId": vid}]},
                            BypassGovernanceRetention=True)
    if res.get("Errors"):
        raise ClientError({"Error": {"Code": res["Errors"][0]["Code"]}}, "DeleteObjects")

sooner = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
for who, s3 in (("agent", agent), ("admin", admin)):
    attempt(f"{who}_delete_version", lambda: s3.delete_object(Bucket=bucket, Key=key, VersionId=vid))
    attempt(f"{who}_delete_version_bypass", lambda: s3.delete_object(Bucket=bucket, Key=key, VersionId=vid,
                                                                      BypassGovernanceRetention=True))
    attempt(f"{who}_delete_batch", lambda: batch_delete(s3))
    attempt(f"{who}_shorten_lock", lambda: s3.put_object_retention(Bucket=bucket, Key=key, VersionId=vid,
        Retention={"Mode": "COMPLIANCE", "RetainUntilDate": sooner}))
    attempt(f"{who}_to_governance", lambda: s3.put_object_retention(Bucket=bucket, Key=key, VersionId=vid,
        Retention={"Mode": "GOVERNANCE", "RetainUntilDate": until}, BypassGovernanceRetention=True))
    attempt(f"{who}_suspend_versioning", lambda: s3.put_bucket_versioning(Bucket=bucket,
        VersioningConfiguration={"Status": "Suspended"}))
    attempt(f"{who}_delete_bucket", lambda: s3.delete_bucket(Bucket=bucket))
attempt("agent_create_bucket", lambda: agent.create_bucket(Bucket=bucket + "-x"))
attempt("agent_lock_config", lambda: agent.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration={
    "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 1}}}))
# A plain delete only writes a delete marker: the locked version is still there, lock unchanged.
attempt("agent_delete_marker", lambda: agent.delete_object(Bucket=bucket, Key=key))
after = admin.get_object(Bucket=bucket, Key=key, VersionId=vid)
out["body_after"] = after["Body"].read().decode()
out["until_unchanged"] = after["ObjectLockRetainUntilDate"] == until
out["mode_after"] = after.get("ObjectLockMode")
cfg = admin.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
out["bucket_rule"] = cfg["Rule"]["DefaultRetention"]
print(json.dumps(out))
"""


def _probe(lab: LabState, embassy: str) -> dict[str, object]:
    v = lab.vault(embassy)
    spec = {"endpoint": v.endpoint, "ca_file": v.ca_file, "agent": v.agent_credentials, "admin": v.admin_credentials,
            "bucket": v.bucket, "key": f"probe/{secrets.token_hex(6)}"}
    res = in_controller_python(lab, PROBE, json.dumps(spec))
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("embassy", ["de", "ie"])
def test_locked_version_cannot_be_deleted_nor_its_lock_shortened(lab: LabState, embassy: str) -> None:
    out = _probe(lab, embassy)
    days = lab.vault(embassy).retention_days
    assert out["lock_mode"] == "COMPLIANCE"
    assert days - 2 <= int(str(out["retain_days"])) <= days
    for who in ("agent", "admin"):
        for action in ("delete_version", "delete_version_bypass", "delete_batch", "shorten_lock", "to_governance",
                       "suspend_versioning", "delete_bucket"):
            assert out[f"{who}_{action}"] != "allowed", (who, action, out)
    assert out["agent_create_bucket"] != "allowed"
    assert out["agent_lock_config"] != "allowed"
    assert out["agent_delete_marker"] == "allowed"
    assert out["body_after"] == "register page 1"
    assert out["until_unchanged"] is True
    assert out["mode_after"] == "COMPLIANCE"
    assert out["bucket_rule"] == {"Mode": "COMPLIANCE", "Days": days}


def test_vault_certificates_carry_dns_names_and_chain_to_the_lab_ca(lab: LabState) -> None:
    for v in lab.vaults:
        cert = x509.load_pem_x509_certificate((Path(v.data_dir).parent / "server.crt").read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        assert v.dns_name in names
        ca = x509.load_pem_x509_certificate(Path(lab.ca_file).read_bytes())
        cert.verify_directly_issued_by(ca)


def test_credentials_are_private_and_outside_the_project(lab: LabState) -> None:
    project = Path(__file__).resolve().parents[2]
    for v in lab.vaults:
        for path in (v.agent_credentials, v.admin_credentials):
            mode = stat.S_IMODE(Path(path).stat().st_mode)
            assert mode == 0o600, (path, oct(mode))
            assert not Path(path).resolve().is_relative_to(project)
    assert stat.S_IMODE(Path(lab.ssh_key).stat().st_mode) == 0o600


def test_vaults_run_without_telemetry_in_their_own_namespace(lab: LabState) -> None:
    root_ns = Path("/proc/self/ns/net").stat().st_ino  # the test runs in the root namespace
    for v in lab.vaults:
        assert v.weed is not None
        argv = Path(f"/proc/{v.weed.pid}/cmdline").read_bytes().split(b"\0")
        assert b"-master.telemetry=false" in argv
        assert f"-ip.bind={v.address}".encode() in argv
        assert Path(f"/proc/{v.weed.pid}/ns/net").stat().st_ino == Path(f"/run/netns/{v.netns}").stat().st_ino
        assert Path(f"/proc/{v.weed.pid}/ns/net").stat().st_ino != root_ns


def test_vault_refuses_an_unverified_client(lab: LabState) -> None:
    # Without the lab CA, TLS verification fails: the CA must be given explicitly, never assumed.
    v = lab.vaults[0]
    code = ("import sys, ssl, urllib.request\n"
            "try:\n urllib.request.urlopen(sys.argv[1], timeout=5, context=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))\n"
            "except Exception as e:\n print(type(e).__name__, e)\n")
    res = in_controller_python(lab, code, v.endpoint + "/")
    assert "CERTIFICATE_VERIFY_FAILED" in res.stdout, res.stdout + res.stderr
