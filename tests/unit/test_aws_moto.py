"""The AWS target's vault path against moto's server (127.0.0.1, TLS, IAM enforced), started once for this module.

The buckets and roles are the stack's plan (`embassy plan`, stacks/ under Pulumi's mocks) applied to the emulator
(tests/unit/aws_moto.py says how, and what moto does not enforce). The controller reaches them only as the
`--target aws` does: outputs from a file, roles assumed through STS, S3 through vaultaccess.

Adversaries: the host nation holding the vault (it plants a manifest signed by another key: verify names it and
exits 1; a restore refuses before touching a host), and anyone with static keys (an IAM user the trust
policies do not name: it can neither read the vault nor assume a role; static keys exported where the target
keeps its identities are replaced by a role session, never used).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from embassy import aws_target as at
from embassy import errors
from embassy.custody import seal, vaultio
from embassy.custody.bundle import Bundle
from embassy.custody.bundle import VaultAccess as BundleVault
from embassy.model import load_stack
from embassy.replication import manifest
from embassy.replication import verify as v
from embassy.vaultaccess import s3_client

from .aws_moto import Moto, apply_roles, apply_vault, moto_server
from .incli import embassy
from .manifest_chains import signed_chain

ROOT = Path(__file__).resolve().parents[2]
HOME_KEY = Ed25519PrivateKey.generate()
OTHER_KEY = Ed25519PrivateKey.generate()  # not home's: what a host nation can sign with
STACK = "rehearsal"
ROUNDS = 3
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=30)


def _body(n: int, previous: str | None, embassy: str) -> dict[str, Any]:
    return {"format": manifest.FORMAT, "stack": STACK, "state": {"name": "Estonia", "code": "EE"},
            "embassy": embassy, "mode": "warm" if embassy != "ie" else "cold", "round": n,
            "time": (NOW + dt.timedelta(minutes=5 * n)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "previous_sha256": previous,
            "registers": [{"name": "population", "kind": "postgres", "repo_path": "/pgbackrest",
                           "backup_label": "20261202-100000F", "wal": {"first": "000000010000000000000002",
                                                                       "last": "000000010000000000000009"},
                           "digest": {"lsn": "0/2FFFFF0"}}]}


class World:
    """The emulator, the temp project whose stack config carries home's key, the outputs file, the environment."""

    def __init__(self, moto: Moto, plan: dict[str, Any], folder: Path) -> None:
        self.moto, self.plan, self.folder = moto, plan, folder
        self.project = folder / "project"
        self.project.mkdir()
        shutil.copy(ROOT / "Pulumi.yaml", self.project / "Pulumi.yaml")
        config = yaml.safe_load((ROOT / f"Pulumi.{STACK}.yaml").read_text())
        config["config"]["data-embassy:manifest_public_key"] = manifest.public_key_pem(HOME_KEY)
        (self.project / f"Pulumi.{STACK}.yaml").write_text(yaml.safe_dump(config))
        self.dep = load_stack(STACK, self.project)
        self.outputs = folder / "outputs.json"
        self.outputs.write_text(json.dumps(plan["outputs"]))
        self.buckets = {e: apply_vault(moto, plan, e) for e in plan["outputs"]["embassies"]}
        self.roles = {e: apply_roles(moto, plan, e) for e in plan["outputs"]["embassies"]}
        # The controller's own identity (an SSO session in real use): here an emulator user the trust policies name.
        self.env = {"AWS_ENDPOINT_URL": moto.url, at.CA_ENV: moto.ca_file,
                    "AWS_ACCESS_KEY_ID": moto.controller["access_key_id"],
                    "AWS_SECRET_ACCESS_KEY": moto.controller["secret_access_key"],
                    "EMBASSY_SECRETS_DIR": str(folder / "controller"), "AWS_CONFIG_FILE": "/dev/null",
                    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}

    def target(self) -> at.AwsDataTarget:
        return at.aws_target(self.dep, self.outputs)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`embassy ARGS` in this process as a fresh controller would run it: in the project, with only this world's
        AWS environment and no role session cached (incli restores the environment it exported)."""
        at.forget_sessions()
        try:
            return embassy(*args, cwd=self.project, env=self.env, drop=("AWS_", "EMBASSY_AWS_"))
        finally:
            at.forget_sessions()


@contextlib.contextmanager
def chained_world(rehearsal_plan: dict[str, Any], folder: Path, rounds: int = ROUNDS,
                  body: Callable[[int, str | None, str], dict[str, Any]] = _body) -> Iterator[World]:
    """Moto's server with the plan applied, the environment as a controller's, and the same signed chain (`rounds`
    manifests of `body`) in every embassy's vault (written as home's agents write it, through each one's agent role)."""
    with moto_server(folder) as moto, pytest.MonkeyPatch.context() as mp:
        w = World(moto, rehearsal_plan, folder)
        for key in [k for k in os.environ if k.startswith(("AWS_", "EMBASSY_AWS_"))]:
            mp.delenv(key)
        for key, value in w.env.items():
            mp.setenv(key, value)
        at.forget_sessions()
        target = w.target()
        for embassy in w.buckets:
            s3 = s3_client(target.vault(embassy).client_spec("agent"))
            for key, data in signed_chain(rounds, body, HOME_KEY, embassy):
                s3.put_object(Bucket=w.buckets[embassy], Key=key, Body=data)
        yield w
        at.forget_sessions()
        for key in [k for k in os.environ if k.startswith("EMBASSY_AWS_")]:  # the sessions the target exported
            del os.environ[key]


@pytest.fixture(scope="module")
def world(rehearsal_plan: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with chained_world(rehearsal_plan, tmp_path_factory.mktemp("aws")) as w:
        yield w


def _denied(call: Any) -> str:
    with pytest.raises(ClientError) as exc:
        call()
    return str(exc.value.response["Error"]["Code"])


def test_the_vault_is_locked_as_the_plan_makes_it(world: World) -> None:
    # Read as the operator: moto names this call s3:GetObjectLockConfiguration, not IAM's
    # s3:GetBucketObjectLockConfiguration, so the restore role (which AWS lets read it) is refused here.
    reader = world.moto.client("s3", world.moto.admin, "eu-central-1")
    assert reader.get_bucket_versioning(Bucket=world.buckets["de"])["Status"] == "Enabled"
    lock = next(r for r in world.plan["resources"] if r["name"] == "de-vault" and r["type"].endswith(
        "BucketObjectLockConfiguration"))["inputs"]["rule"]["defaultRetention"]
    got = reader.get_object_lock_configuration(Bucket=world.buckets["de"])["ObjectLockConfiguration"]
    rule = got["Rule"]["DefaultRetention"]
    assert got["ObjectLockEnabled"] == "Enabled" and (rule["Mode"], rule["Days"]) == (lock["mode"], int(lock["days"]))
    assert lock["mode"] == "COMPLIANCE" and int(lock["days"]) == world.dep.embassy("de").retention_days


def test_identities_are_role_sessions_with_the_roles_limits(world: World) -> None:
    target = world.target()
    vault = target.vault("de")
    bucket = world.buckets["de"]
    agent, reader = s3_client(vault.client_spec("agent")), s3_client(vault.client_spec("reader"))
    custody = s3_client(vault.client_spec("custody"))
    prefix = at.env_prefix("de", "reader")
    assert os.environ[f"{prefix}_SESSION_TOKEN"]  # a session of the restore role: temporary, never a static key
    assert target.session("de", "reader").expires - dt.datetime.now(dt.UTC) <= dt.timedelta(seconds=at.SESSION_SECONDS)

    put = agent.put_object(Bucket=bucket, Key="probes/limits.json", Body=b"{}")
    assert agent.get_object(Bucket=bucket, Key="probes/limits.json")["ObjectLockMode"] == "COMPLIANCE"
    # The agent role cannot destroy a version or shorten a lock (its policy's explicit Deny, as moto evaluates it).
    assert _denied(lambda: agent.delete_object(Bucket=bucket, Key="probes/limits.json",
                                               VersionId=put["VersionId"])) == "AccessDenied"
    assert _denied(lambda: agent.put_object_retention(
        Bucket=bucket, Key="probes/limits.json",
        Retention={"Mode": "GOVERNANCE", "RetainUntilDate": dt.datetime.now(dt.UTC) + dt.timedelta(days=1)})) \
        == "AccessDenied"
    # The restore role reads and cannot write; the custody role writes bundles only.
    assert _denied(lambda: reader.put_object(Bucket=bucket, Key="manifests/x.json", Body=b"{}")) == "AccessDenied"
    assert _denied(lambda: custody.put_object(Bucket=bucket, Key="manifests/x.json", Body=b"{}")) == "AccessDenied"


def test_a_host_command_gets_a_session_that_outlasts_its_timeout(world: World) -> None:
    """pgBackRest cannot renew shared keys: a restore step with a 30-minute timeout must not be handed a session
    with 5 minutes left. Short commands reuse the 900 s session; a long one gets its own, up to the roles' 3600 s."""
    target = world.target()
    now = dt.datetime.now(dt.UTC)
    short = target.session("de", "reader", valid_for=120)
    assert target.session("de", "reader", valid_for=60) == short  # reused: no STS call per command
    long = target.session("de", "reader", valid_for=1800)
    assert long != short and long.expires - now >= dt.timedelta(seconds=1800)
    assert long.expires - now <= dt.timedelta(seconds=at.MAX_SESSION_SECONDS + 5)
    longest = target.session("de", "reader", valid_for=7200)  # more than a role grants: the most it grants
    assert dt.timedelta(seconds=at.MAX_SESSION_SECONDS - 60) <= longest.expires - now \
        <= dt.timedelta(seconds=at.MAX_SESSION_SECONDS + 5)
    region = world.plan["outputs"]["embassies"]["de"]["region"]
    as_host = world.moto.client("s3", {"access_key_id": longest.access_key_id,
                                       "secret_access_key": longest.secret_access_key,
                                       "session_token": longest.session_token}, region)
    assert as_host.get_object(Bucket=world.buckets["de"], Key=manifest.object_key(1))["Body"].read()


def test_anyone_with_static_keys_gets_nothing(world: World) -> None:
    stranger = world.moto.user("someone-with-static-keys")
    s3 = world.moto.client("s3", stranger, "eu-central-1")
    assert _denied(lambda: s3.get_object(Bucket=world.buckets["de"], Key=manifest.object_key(1))) == "AccessDenied"
    sts = world.moto.client("sts", stranger, "eu-central-1")
    assert _denied(lambda: sts.assume_role(RoleArn=world.roles["de"]["restore"], RoleSessionName="theft")) \
        == "AccessDenied"
    # Static keys exported where the target keeps the reader identity are replaced by a role session, never used.
    prefix = at.env_prefix("de", "reader")
    os.environ[f"{prefix}_ACCESS_KEY_ID"] = stranger["access_key_id"]
    os.environ[f"{prefix}_SECRET_ACCESS_KEY"] = stranger["secret_access_key"]
    spec = world.target().vault("de").client_spec("reader")
    assert os.environ[f"{prefix}_ACCESS_KEY_ID"] != stranger["access_key_id"]
    assert s3_client(spec).get_object(Bucket=world.buckets["de"], Key=manifest.object_key(1))["Body"].read()
    # And a controller whose identity the trust policies do not name cannot become the role.
    at.forget_sessions()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", stranger["access_key_id"])
        mp.setenv("AWS_SECRET_ACCESS_KEY", stranger["secret_access_key"])
        with pytest.raises(errors.RoleNotAssumed) as exc:
            world.target().vault("de").client_spec("reader")
    assert world.roles["de"]["restore"] in exc.value.message and exc.value.code == errors.EXIT_USAGE
    at.forget_sessions()


def test_manifests_written_by_the_agent_role_are_read_back_by_the_restore_role(world: World) -> None:
    target = world.target()
    objects = v.fetch_manifests(target, "de")  # the verify's own reader, in a subprocess, with the reader role
    want = dict(signed_chain(ROUNDS, _body, HOME_KEY, "de"))
    assert {o.key: o.data for o in objects} == want
    assert {o.lock_mode for o in objects} == {"COMPLIANCE"}
    chain, failure = v.walk(objects, HOME_KEY.public_key(), stack=STACK, embassy="de")
    assert failure is None and [m.round for m in chain] == list(range(1, ROUNDS + 1))
    result = v.Result("de")
    v.check_manifest_locks(objects, chain, world.dep.embassy("de").retention_days, "de", result)
    assert result.intact, result.first_failure
    # What a restore compares any later read with: the same bytes, nothing added.
    assert v.same_chain(chain, v.fetch_manifests(target, "de")) is None


def test_verify_cli_on_an_intact_vault_passes_the_vault_and_then_needs_ssm(world: World) -> None:
    done = world.cli("verify", "--stack", STACK, "--embassy", "de", "--target", "aws", "--outputs", str(world.outputs))
    if shutil.which("aws") and shutil.which("session-manager-plugin"):
        pytest.fail("this machine has the SSM tools: the host checks would reach for a real instance")
    # Signatures, links, manifest locks and freshness (the other two vaults hold the same chain) passed; the next
    # checks run on the enclave host over SSM, which this machine cannot reach: exit 2 naming what is missing.
    assert done.returncode == 2, done.stdout + done.stderr
    assert "over SSM needs" in done.stderr and "HINT:" in done.stderr


# --------------------------------------------------------------------------- hosts over SSM, recorded
#
# The SSM session itself cannot run here (no instance, no session-manager-plugin): `ssh` on the PATH below records
# the argv and the input the controller hands it and answers as an unreachable host does (exit 255). Everything up
# to that hand-over is the real code path: the CLI, the vault check with the restore role, the assumed session.

FAKE_SSH = """#!/bin/sh
# Records what the controller hands ssh (argv NUL-separated, then its input) and answers as an unreachable host.
n=$(ls "$SSH_RECORD" | wc -l)
printf '%s\\0' ssh "$@" > "$SSH_RECORD/$n.argv"
cat > "$SSH_RECORD/$n.input"
echo "ssh: connect to host via SSM: no answer (recorded by the test)" >&2
exit 255
"""


def _recording_ssh(world: World, name: str) -> tuple[Path, dict[str, str]]:
    tools, record = world.folder / f"{name}-bin", world.folder / f"{name}-record"
    tools.mkdir()
    record.mkdir()
    (tools / "ssh").write_text(FAKE_SSH)
    for tool in ("aws", "session-manager-plugin"):  # never run: the recorded ssh does not start its ProxyCommand
        (tools / tool).write_text("#!/bin/sh\necho not run >&2\nexit 99\n")
    for tool in tools.iterdir():
        tool.chmod(0o755)
    return record, {"PATH": f"{tools}:{os.environ['PATH']}", "SSH_RECORD": str(record)}


def _recorded(record: Path) -> list[tuple[list[str], str]]:
    calls = sorted(record.glob("*.argv"), key=lambda p: int(p.stem))
    return [([a.decode() for a in p.read_bytes().split(b"\0")[:-1]], p.with_suffix(".input").read_text())
            for p in calls]


def _cli_over_recorded_ssh(world: World, command: str) -> tuple[subprocess.CompletedProcess[str],
                                                                    list[tuple[list[str], str]]]:
    """`embassy <command> --embassy de --target aws --json` with ssh recording what it is handed (argv, input)."""
    record, env = _recording_ssh(world, command)
    world.env.update(env)
    try:
        done = world.cli(command, "--stack", STACK, "--embassy", "de", "--target", "aws", "--outputs",
                         str(world.outputs), "--json")
    finally:
        for key in env:
            del world.env[key]
    return done, _recorded(record)


def _exported(script: str) -> dict[str, str]:
    return {name: value for line in script.splitlines() if line.startswith("export ")
            for name, _, value in [shlex.split(line[len("export "):])[0].partition("=")]}


def _check_session_handed_to_host(world: World, embassy: str, argv: list[str], script: str) -> None:
    """The host got a session of the restore role on its input: in no argv, able to read the vault, not to write."""
    target = world.target()
    assert argv == at.ssh_argv(target.host(embassy), ["sudo", "sh", "-s"], known_hosts=target.known_hosts)
    env = _exported(script)
    secrets = [env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env["AWS_SESSION_TOKEN"]]
    assert env["PGBACKREST_REPO1_S3_KEY_TYPE"] == "shared" and env["PGBACKREST_REPO1_S3_TOKEN"] == secrets[2]
    assert not any(secret in part for part in argv for secret in secrets)
    region = world.plan["outputs"]["embassies"][embassy]["region"]
    as_host = world.moto.client("s3", {"access_key_id": secrets[0], "secret_access_key": secrets[1],
                                       "session_token": secrets[2]}, region)
    bucket = world.buckets[embassy]
    assert as_host.get_object(Bucket=bucket, Key=manifest.object_key(1))["Body"].read()
    assert _denied(lambda: as_host.put_object(Bucket=bucket, Key="pgbackrest/x", Body=b"x")) == "AccessDenied"
    # A script the remote `sh -s` parses (syntax only here: the commands are the host's).
    subprocess.run(["sh", "-n"], input=script, text=True, check=True, timeout=10)


def test_restore_cli_checks_the_vault_then_reaches_the_host_over_ssm_with_a_session(world: World) -> None:
    done, calls = _cli_over_recorded_ssh(world, "restore")
    # The vault passed (signatures, links, manifest locks, freshness against the other two vaults) before any
    # host was reached; then the host did not answer: HostUnreachable, exit 1, nothing restored.
    assert done.returncode == 1, done.stdout + done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["error"]["error"] == "HostUnreachable" and "enclave-de" in outcome["error"]["message"]
    assert [(s["step"], s["ok"]) for s in outcome["steps"]][:1] == [("reach enclave-de", False)]
    assert not any(r["restored"] for r in outcome["registers"])
    assert len(calls) == 1
    argv, script = calls[0]
    assert script.rstrip().endswith("{\ntrue\n} </dev/null")
    _check_session_handed_to_host(world, "de", argv, script)


def test_verify_cli_runs_the_host_checks_over_ssm_with_a_session(world: World) -> None:
    done, calls = _cli_over_recorded_ssh(world, "verify")
    assert done.returncode == 1, done.stdout + done.stderr
    result = json.loads(done.stdout)
    # The vault's checks passed; the first host check (the repositories the host reads) went over SSM and failed.
    assert result["first_failure"]["object"] == "host:de" and "ssh:" in result["first_failure"]["reason"]
    assert len(calls) == 1
    argv, script = calls[0]
    assert "repo1-path" in script and "/etc/pgbackrest/pgbackrest.conf" in script
    _check_session_handed_to_host(world, "de", argv, script)


def test_a_manifest_signed_by_another_key_is_named_exit_1(world: World) -> None:
    chain = signed_chain(ROUNDS, _body, HOME_KEY, "se")
    forged_body = _body(ROUNDS + 1, manifest.sha256(chain[-1][1]), "se")
    forged_key = manifest.object_key(ROUNDS + 1)
    # The host nation writes below S3 what it likes; here through S3 with the agent role (the bytes are the point).
    s3 = s3_client(world.target().vault("se").client_spec("agent"))
    s3.put_object(Bucket=world.buckets["se"], Key=forged_key, Body=manifest.sign(forged_body, OTHER_KEY))
    done = world.cli("verify", "--stack", STACK, "--embassy", "se", "--target", "aws", "--outputs", str(world.outputs),
                     "--json")
    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)
    assert result["intact"] is False and result["first_failure"]["object"] == forged_key
    assert "signed by another key" in result["first_failure"]["reason"]

    # A restore's vault check: the same verdict, as the registry error a restore raises before touching a host.
    checked = v.verify(world.dep, world.target(), "se", accept_unanchored=True)
    assert not checked.intact and checked.chain == []
    err = checked.error("nothing was restored")
    assert isinstance(err, errors.EmbassyError) and err.code == errors.EXIT_FINDING and forged_key in err.message


def test_a_custody_bundle_is_stored_by_the_custody_role_and_read_back(world: World) -> None:
    target = world.target()
    vault = target.vault("ie")
    bundle = Bundle(stack=STACK, embassy="ie", version=1, created=NOW.isoformat(),
                    manifest_public_key=manifest.public_key_pem(HOME_KEY),
                    vault=BundleVault(embassy="ie", endpoint=vault.endpoint, dns_name="", bucket=vault.bucket,
                                      region=vault.region, ca_pem="", access_key_id="", secret_access_key=""),
                    sealed_round=ROUNDS)
    key = os.urandom(32)
    envelope = seal.seal(bundle, key, identifier=1, threshold=2, officials=3, sign=HOME_KEY.sign)
    name = vaultio.object_key(STACK, 1)
    custody = s3_client(vault.client_spec("custody"))
    custody.put_object(Bucket=vault.bucket, Key=name, Body=json.dumps(envelope).encode())
    # Read back with the restore role (what a restore at the embassy holds), listed under the stack's prefix.
    reader = s3_client(vault.client_spec("reader"))
    listed = reader.list_objects_v2(Bucket=vault.bucket, Prefix=f"{vaultio.PREFIX}{STACK}/")["Contents"]
    assert [i["Key"] for i in listed] == [name] and vaultio.version_of(name, STACK) == 1
    got = reader.get_object(Bucket=vault.bucket, Key=name)
    assert got["ObjectLockMode"] == "COMPLIANCE"
    stored = seal.parse_envelope(got["Body"].read())
    assert isinstance(stored, dict)
    seal.authenticate(stored, name, manifest.public_key_pem(HOME_KEY))
    assert seal.unseal(stored, key, name, stack=STACK, embassy="ie") == bundle
    # Signed by anyone else, the same envelope is refused before a byte of it is read.
    forged = {**stored, "signature": {"alg": "ed25519", "value": base64.b64encode(
        OTHER_KEY.sign(seal.signed_bytes(seal.header_of(stored, name).model_dump(), stored["ciphertext"]))).decode()}}
    with pytest.raises(errors.SignatureInvalid):
        seal.authenticate(forged, name, manifest.public_key_pem(HOME_KEY))


def test_restore_refuses_a_tampered_manifest_before_any_host(world: World) -> None:
    """The host nation rewrites round 2 in the vault (a new version of the key, home's signature kept): the restore
    reads the chain with the restore role, names the object and exits 1, without reaching for a host (this machine
    has no SSM tools: a host reached first would have been exit 2)."""
    chain = dict(signed_chain(ROUNDS, _body, HOME_KEY, "ie"))
    key = manifest.object_key(2)
    tampered = chain[key].replace(b"20261202-100000F", b"20261202-100001F", 1)  # another backup, same signature
    assert tampered != chain[key]
    s3 = s3_client(world.target().vault("ie").client_spec("agent"))
    s3.put_object(Bucket=world.buckets["ie"], Key=key, Body=tampered)
    done = world.cli("restore", "--stack", STACK, "--embassy", "ie", "--target", "aws", "--outputs",
                     str(world.outputs), "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["error"]["code"] // 100 == 2 and key in outcome["error"]["message"]
    assert outcome["verify"] is None or outcome["verify"]["first_failure"]["object"] == key
    assert not any(s["step"].startswith("reach") for s in outcome["steps"])
    assert not any(r["restored"] for r in outcome["registers"])
