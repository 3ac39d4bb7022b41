"""moto's server on 127.0.0.1 (TLS with a throw-away CA, IAM enforced) and the stack's plan applied to it.

moto is an emulator of the AWS control plane, not a vault (notes/dataplane.md: it lets anyone shorten a
COMPLIANCE retention and gives multipart uploads no lock). What it does enforce, with
INITIAL_NO_AUTH_ACTION_COUNT set: SigV4 signatures against the access keys it issued, identity policies
(Allow and Deny, actions and resources; not conditions), and roles' trust policies on AssumeRole (by exact
principal ARN). So the tests here prove the controller's side (outputs, STS, credentials, reads and writes
through the stack's roles) and the roles' limits as far as moto checks them, never the vault's immutability.

The buckets and roles are made from the stack's plan (`embassy plan`: stacks/ under Pulumi's mocks), resource by
resource, with the plan's own names, settings and policy documents. One substitution, because moto compares
trust principals by exact ARN where AWS lets a role's sessions match the role: the key administrators' role
named in the trust policies is played by an IAM user of the emulator (CONTROLLER_USER).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.config import Config

from embassy.replication import vaultnet

ACCOUNT = "123456789012"  # moto's default account; the plan's mocks use the same
CONTROLLER_USER = "embassy-controller"  # stands in for the key administrators' role of the trust policies
ADMIN_USER = "moto-admin"  # makes the buckets and roles (the operator's `pulumi up`)
UNAUTHENTICATED_SETUP = 3  # CreateUser, CreateAccessKey, PutUserPolicy of the admin: then IAM is enforced


@dataclass
class Moto:
    url: str
    ca_file: str
    admin: dict[str, str]
    controller: dict[str, str]
    folder: Path

    def client(self, service: str, keys: dict[str, str], region: str = "us-east-1") -> Any:
        return vaultnet.session().client(  # the product's sessions: one parse of botocore's models per process
            service, endpoint_url=self.url, region_name=region, verify=self.ca_file,
            aws_access_key_id=keys["access_key_id"], aws_secret_access_key=keys["secret_access_key"],
            aws_session_token=keys.get("session_token"),
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))

    def user(self, name: str, policy: dict[str, Any] | None = None) -> dict[str, str]:
        """An IAM user with static keys (and, if given, an inline policy)."""
        iam = self.client("iam", self.admin)
        iam.create_user(UserName=name)
        if policy is not None:
            iam.put_user_policy(UserName=name, PolicyName="inline", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}


def _ca_and_cert(folder: Path) -> tuple[Path, Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "embassy test CA (moto)")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                         x509.DNSName("localhost")]),  # pgBackRest wants a name
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = folder / "ca.crt", folder / "server.crt", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def moto_server(folder: Path) -> Iterator[Moto]:
    """moto's server on 127.0.0.1 (never 0.0.0.0), TLS, IAM enforced after the admin exists; stopped by its PID."""
    ca, cert, key = _ca_and_cert(folder)
    port = _free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(UNAUTHENTICATED_SETUP), "MOTO_ACCOUNT_ID": ACCOUNT}
    log = (folder / "moto.log").open("wb")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port),
                             "-c", str(cert), "-k", str(key)], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start: {(folder / 'moto.log').read_text()[-2000:]}") from None
                time.sleep(0.2)
        boot = Moto(url, str(ca), {"access_key_id": "AKIASETUPSETUPSETUP0", "secret_access_key": "setup"}, {}, folder)
        iam = boot.client("iam", boot.admin)
        iam.create_user(UserName=ADMIN_USER)
        got = iam.create_access_key(UserName=ADMIN_USER)["AccessKey"]
        iam.put_user_policy(UserName=ADMIN_USER, PolicyName="admin", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        boot.admin = {"access_key_id": got["AccessKeyId"], "secret_access_key": got["SecretAccessKey"]}
        boot.controller = boot.user(CONTROLLER_USER, {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}]})
        yield boot
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


# --------------------------------------------------------------------------- the plan, applied


def _by(plan: dict[str, Any], typ: str, name: str) -> dict[str, Any] | None:
    return next((r for r in plan["resources"] if r["type"] == typ and r["name"] == name), None)


def apply_vault(m: Moto, plan: dict[str, Any], embassy: str) -> str:
    """The embassy's vault bucket, configured as the plan's resources configure it; its name."""
    region = plan["outputs"]["embassies"][embassy]["region"]
    s3 = m.client("s3", m.admin, region)
    name = f"{embassy}-vault"
    bucket_res = _by(plan, "aws:s3/bucket:Bucket", name)
    assert bucket_res is not None
    lock = _by(plan, "aws:s3/bucketObjectLockConfiguration:BucketObjectLockConfiguration", name)
    assert lock is not None
    bucket = lock["inputs"]["bucket"]
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region},
                     ObjectLockEnabledForBucket=bool(bucket_res["inputs"]["objectLockEnabled"]))
    versioning = _by(plan, "aws:s3/bucketVersioning:BucketVersioning", name)
    assert versioning is not None
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={
        "Status": versioning["inputs"]["versioningConfiguration"]["status"]})
    rule = lock["inputs"]["rule"]["defaultRetention"]
    s3.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration={
        "ObjectLockEnabled": lock["inputs"]["objectLockEnabled"],
        "Rule": {"DefaultRetention": {"Mode": rule["mode"], "Days": int(rule["days"])}}})
    block = _by(plan, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", name)
    assert block is not None
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
        k[0].upper() + k[1:]: v for k, v in block["inputs"].items() if k != "bucket"})
    # Not applied, and why: the bucket default SSE-KMS names the plan's mock key, which moto does not hold
    # (moto accepts it and encrypts nothing); the bucket policy's conditions are not evaluated by moto.
    return str(bucket)


# moto authorizes some calls under their API name instead of IAM's action name. Where the plan grants the IAM
# action, the same Allow statement also gets moto's name for that call; Deny statements and everything else stay
# as the plan wrote them.
MOTO_NAMES = {"s3:ListBucket": ("s3:ListObjects", "s3:ListObjectsV2"),
              "s3:GetBucketObjectLockConfiguration": ("s3:GetObjectLockConfiguration",)}


def with_moto_names(policy: str) -> str:
    doc = json.loads(policy)
    for statement in doc["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if statement["Effect"] == "Allow":
            statement["Action"] = actions + [alias for a in actions for alias in MOTO_NAMES.get(a, ())]
    return json.dumps(doc)


def apply_roles(m: Moto, plan: dict[str, Any], embassy: str) -> dict[str, str]:
    """The embassy's agent, restore, custody and break-glass roles with the plan's trust and inline policies."""
    iam = m.client("iam", m.admin)
    controller_arn = f"arn:aws:iam::{ACCOUNT}:user/{CONTROLLER_USER}"
    outputs = plan["outputs"]["embassies"][embassy]
    made = {}
    for kind in ("agent", "restore", "custody", "break-glass"):
        arn = outputs[f"{kind.replace('-', '_')}_role_arn"]
        physical = arn.rsplit("/", 1)[1]
        role = _by(plan, "aws:iam/role:Role", f"{embassy}-{kind}")
        assert role is not None
        trust = role["inputs"]["assumeRolePolicy"]
        if trust == "[secret]":  # break-glass: its trust holds the external id, redacted from the plan
            trust = json.dumps({"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"AWS": "arn:aws:iam::111122223333:root"}}]})
        key_admins = json.loads(trust)["Statement"][0]["Principal"]["AWS"]
        trust = trust.replace(key_admins[0], controller_arn) if isinstance(key_admins, list) else trust
        iam.create_role(RoleName=physical, AssumeRolePolicyDocument=trust,
                        MaxSessionDuration=int(role["inputs"].get("maxSessionDuration", 3600)))
        policy = _by(plan, "aws:iam/rolePolicy:RolePolicy", f"{embassy}-{kind}-vault")
        assert policy is not None
        iam.put_role_policy(RoleName=physical, PolicyName=f"{embassy}-{kind}-vault",
                            PolicyDocument=with_moto_names(policy["inputs"]["policy"]))
        made[kind] = arn
    return made
