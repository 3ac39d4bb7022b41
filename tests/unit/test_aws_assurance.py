"""`restore-test --target aws` and `status --target aws` against moto's server (127.0.0.1, TLS, IAM enforced), with
the rehearsal stack's plan applied (tests/unit/aws_moto.py; the same World as test_aws_moto.py, its own server).

The host is not an instance here: `ssh` on the PATH is a stand-in that records what the controller hands it (the
SSM argv, the restore role's session on its input) and then runs the embassy host's own restore-test code
(embassy.replication.restoretest: read_chain, result, record) with that session for reading the vault, as the real
host does after `sudo sh -s` (a handed session wins over the deploy's reader file, which does not exist here).
Only the scratch restore itself (PostgreSQL, restic) is not run: its registers are reported with the digests of
the signed point. The record goes where the lab's goes (restore-tests/<time>.json,
the bucket's default COMPLIANCE lock), and `status --target aws` reads it back with the restore role.

Adversaries: the host nation holding the vault (it rewrites a record, or plants one signed by its own key, or forges
the manifest chain under a record: each is refused naming the object); a role used beyond its grant (the restore
role's session the host gets cannot write a record: moto refuses it).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from embassy import aws_target as at
from embassy.assurance import records
from embassy.replication import manifest, restoretest
from embassy.vaultaccess import s3_client

from .manifest_chains import signed_chain
from .test_aws_moto import HOME_KEY, OTHER_KEY, ROUNDS, STACK, World, _body, _exported, _recorded, chained_world

# The two ssh stand-ins below begin alike: record the argv and the input (in SSH_RECORD, numbered), keep the input.
SSH_RECORDER = r'''import os, sys
from pathlib import Path
record = Path(os.environ["SSH_RECORD"])
n = len(list(record.glob("*.argv")))
(record / f"{{n}}.argv").write_bytes(b"".join(a.encode() + b"\0" for a in ["ssh", *sys.argv[1:]]))
given = sys.stdin.read()
(record / f"{{n}}.input").write_text(given)
'''

FAKE_HOST = r'''#!{python}
"""ssh standing in for an SSM session to the enclave: records argv and input, then runs the host's restore test."""
''' + SSH_RECORDER + r'''import datetime as dt, json, shlex, time
env = {{}}
for line in given.splitlines():
    if line.startswith("export "):
        name, _, value = shlex.split(line[len("export "):])[0].partition("=")
        env[name] = value
config = json.loads(Path(os.environ["FAKE_HOST_CONFIG"]).read_text())
os.environ.update(env)  # what `sh -s` exports before the command; the deploy's reader file does not exist here
from embassy.replication import restoretest
restoretest.STATE_DIR = config["state_dir"]
started, t0 = dt.datetime.now(dt.UTC), time.monotonic()
try:
    chosen = restoretest.read_chain(config)[-1]
    failure = None
except restoretest.Failed as exc:
    chosen, failure = None, exc
regs = [] if chosen is None else [
    {{"name": r["name"], "kind": r["kind"], "digest_ok": True, "digest": r["digest"], "milliseconds": 1200,
      "rto_seconds": config["rto"][r["name"]], "within_rto": True}} for r in chosen.body["registers"]]
body = restoretest.result(config, chosen, started, time.monotonic() - t0, regs, failure, "cli")
try:
    key = restoretest.record(config, body)
except Exception as exc:
    print(json.dumps({{**body, "record": None}}, sort_keys=True))
    print(f"error: the result could not be written to the vault: {{type(exc).__name__}}: {{exc}}", file=sys.stderr)
    sys.exit(1)
print(json.dumps({{**body, "record": key}}, sort_keys=True))
'''


@pytest.fixture(scope="module")
def world(rehearsal_plan: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with chained_world(rehearsal_plan, tmp_path_factory.mktemp("aws-assurance")) as w:
        yield w


def _private(path: Path, doc: dict[str, Any]) -> str:
    path.write_text(json.dumps(doc))
    path.chmod(0o600)
    return str(path)


def host_config(world: World, embassy: str, name: str, writer: dict[str, str] | None = None) -> Path:
    """/etc/embassy/restore-test.json as the deploy writes it, pointed at the emulator's vault; the signing key is the
    controller's copy of the embassy's restore-test key (records.py), as the deploy installs it on the host."""
    folder = world.folder / name
    folder.mkdir()
    target = world.target()
    vault = target.vault(embassy)
    if writer is None:  # who writes records on AWS is the host's writer identity: here a session of the agent role
        writer = target.session(embassy, "agent").parts()
    signing = folder / "signing.pem"
    signing.write_text(records.private_pem(target.controller_folder, embassy))
    (folder / "state").mkdir()
    config = {"stack": STACK, "embassy": embassy, "point": "latest", "window_days": 7,
              "retention_days": world.dep.embassy(embassy).retention_days,
              "public_key": manifest.public_key_pem(HOME_KEY), "signing_key": str(signing),
              "state_dir": str(folder / "state"), "rto": {r.name: r.rto_seconds for r in world.dep.registers},
              "vault": {"endpoint": world.moto.url, "bucket": vault.bucket, "region": vault.region,
                        "ca_file": world.moto.ca_file, "reader_credentials": str(folder / "reader.json"),
                        "writer": "file", "writer_credentials": _private(folder / "writer.json", writer),
                        "create_only": True}}
    path = folder / "restore-test.json"
    path.write_text(json.dumps(config))
    return path


def fake_host(world: World, name: str, config: Path) -> tuple[Path, dict[str, str]]:
    tools, record = world.folder / f"{name}-bin", world.folder / f"{name}-record"
    tools.mkdir()
    record.mkdir()
    (tools / "ssh").write_text(FAKE_HOST.format(python=sys.executable))
    for tool in ("aws", "session-manager-plugin"):  # never run: the stand-in ssh starts no ProxyCommand
        (tools / tool).write_text("#!/bin/sh\necho not run >&2\nexit 99\n")
    for tool in tools.iterdir():
        tool.chmod(0o755)
    return record, {"PATH": f"{tools}:{os.environ['PATH']}", "SSH_RECORD": str(record),
                    "FAKE_HOST_CONFIG": str(config)}


def cli(world: World, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    world.env.update(env or {})
    try:
        return world.cli(*args, "--stack", STACK, "--target", "aws", "--outputs", str(world.outputs), "--json")
    finally:
        for key in env or {}:
            del world.env[key]


def embassy_of(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(e for e in doc["embassies"] if e["name"] == name)


def _run_restore_test(world: World, embassy: str, env: dict[str, str],
                      monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """`embassy restore-test --target aws`'s own code (assurance.restoretest.run) on the target, in this process, with
    the controller's vault verify taken as passed: its checks after the host's (the locks of the objects a restore
    relies on, by HEAD) cannot pass on moto, which refuses HEAD to role sessions (test_aws_moto.py says so); its
    vault checks on AWS are test_aws_moto.py's, and a forged chain below is refused by the CLI itself."""
    from embassy.assurance import restoretest as lib
    from embassy.replication import verify as v

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(v, "verify", lambda *_a, **_k: v.Result(embassy))
    return lib.run(world.dep, world.target(), embassy)


def test_restore_test_on_aws_records_in_the_vault_and_status_reads_it(world: World,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    config = host_config(world, "de", "de-host")
    record, env = fake_host(world, "de-restore-test", config)
    out = _run_restore_test(world, "de", env, monkeypatch)
    assert out["passed"] and out["point"]["round"] == ROUNDS and out["record"].startswith(restoretest.RECORD_PREFIX)
    # Exactly one SSM session, `sudo sh -s`, its input the restore role's session and the host's own restore-test
    # command (no argv carries a secret).
    calls = _recorded(record)
    assert len(calls) == 1
    argv, script = calls[0]
    target = world.target()
    assert argv == at.ssh_argv(target.host("de"), ["sudo", "sh", "-s"], known_hosts=target.known_hosts)
    assert "python3 -m replication.restoretest run --trigger cli" in script
    session = _exported(script)
    assert not any(session["AWS_SESSION_TOKEN"] in a or session["AWS_SECRET_ACCESS_KEY"] in a for a in argv)
    # That session is the restore role's: it read the chain on the host, and it cannot write a record.
    region = world.plan["outputs"]["embassies"]["de"]["region"]
    as_host = world.moto.client("s3", {"access_key_id": session["AWS_ACCESS_KEY_ID"],
                                       "secret_access_key": session["AWS_SECRET_ACCESS_KEY"],
                                       "session_token": session["AWS_SESSION_TOKEN"]}, region)
    with pytest.raises(ClientError) as refused:
        as_host.put_object(Bucket=world.buckets["de"], Key=restoretest.record_key(dt.datetime.now(dt.UTC)),
                           Body=b"{}")
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    # The record is where the lab's is, under the bucket's COMPLIANCE lock (read back with the restore role).
    got = s3_client(target.vault("de").client_spec("reader")).get_object(Bucket=world.buckets["de"], Key=out["record"])
    assert got["ObjectLockMode"] == "COMPLIANCE"

    done = cli(world, "status")
    doc = json.loads(done.stdout)
    de = embassy_of(doc, "de")
    assert de["restore_tests_established"] and de["restore_tests_problem"] is None, de
    assert de["last_restore_test"]["passed"] and de["last_restore_test"]["point"]["round"] == ROUNDS
    assert [t["key"] for t in de["restore_tests"]] == [out["record"]]
    assert de["head"]["round"] == ROUNDS and de["chain_problem"] is None
    assert not any(a.startswith("de: restore test") for a in doc["alerts"]), doc["alerts"]
    # The other embassies have none yet: not established, an alert each, exit 1.
    assert done.returncode == 1 and any(a.startswith("se: restore tests NOT ESTABLISHED") for a in doc["alerts"])


def test_a_record_the_restore_role_would_write_is_refused_and_the_test_fails(world: World,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A host whose only identity is the restore role's session (a role used beyond its grant) cannot record its
    result: moto refuses the write, the host says so, and `restore-test` fails naming the vault's record prefix."""
    reader = world.target().session("se", "reader").parts()
    config = host_config(world, "se", "se-host", writer=reader)
    _record, env = fake_host(world, "se-restore-test", config)
    out = _run_restore_test(world, "se", env, monkeypatch)
    assert not out["passed"] and out["failure"]["object"] == f"vault:se/{restoretest.RECORD_PREFIX}"
    assert "AccessDenied" in out["failure"]["reason"]


def _put(world: World, embassy: str, key: str, data: bytes) -> None:
    # The host nation writes what it likes below S3; through S3 here, with the agent role (the bytes are the point).
    s3_client(world.target().vault(embassy).client_spec("agent")).put_object(Bucket=world.buckets[embassy], Key=key,
                                                                             Body=data)


def _status_de(world: World) -> dict[str, Any]:
    """`status`'s own code in this process (the CLI's is shown once above: each run costs an interpreter start)."""
    from embassy.assurance import status

    doc = status.status(world.dep, world.target())
    assert not doc["ok"]
    return embassy_of(doc, "de")


def test_status_refuses_a_rewritten_record_naming_it(world: World) -> None:
    """The host nation turns the passed record into something else (a new version of the same key, the signature
    kept): not established, naming the object; then the same with a record signed by its own key."""
    target = world.target()
    reader = s3_client(target.vault("de").client_spec("reader"))
    listed = reader.list_objects_v2(Bucket=world.buckets["de"], Prefix=restoretest.RECORD_PREFIX)["Contents"]
    key = listed[-1]["Key"]
    original = reader.get_object(Bucket=world.buckets["de"], Key=key)["Body"].read()
    doc = json.loads(original)
    doc["record"]["milliseconds"] += 1
    _put(world, "de", key, manifest.canonical(doc))
    de = _status_de(world)
    assert not de["restore_tests_established"] and de["last_restore_test"] is None
    assert de["restore_tests_problem"]["object"] == f"vault:de/{key}"
    assert "signature does not verify" in de["restore_tests_problem"]["reason"]
    _put(world, "de", key, original)  # the host nation puts the original back: the newest version reads true again

    body = {**doc["record"], "milliseconds": doc["record"]["milliseconds"] - 1}
    body["time"] = body["time"][:-4] + "999Z" if body["time"].endswith("Z") else body["time"]
    forged_key = restoretest.record_key(manifest.parse_time(body["time"]))
    _put(world, "de", forged_key, restoretest.sign_record(body, OTHER_KEY))
    de = _status_de(world)
    assert de["restore_tests_problem"]["object"] == f"vault:de/{forged_key}"
    assert "signed by another key" in de["restore_tests_problem"]["reason"]


def test_a_forged_chain_fails_restore_test_before_any_host_and_status_names_it(world: World) -> None:
    """A manifest signed by another key at ie: restore-test stops at the vault (no SSM session), exit 1 naming it;
    status names the same object as ie's chain problem."""
    chain = signed_chain(ROUNDS, _body, HOME_KEY, "ie")
    forged_key = manifest.object_key(ROUNDS + 1)
    _put(world, "ie", forged_key, manifest.sign(_body(ROUNDS + 1, manifest.sha256(chain[-1][1]), "ie"), OTHER_KEY))
    record, env = fake_host(world, "ie-restore-test", host_config(world, "ie", "ie-host"))
    done = cli(world, "restore-test", "--embassy", "ie", env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert out["failure"]["object"] == forged_key and "signed by another key" in out["failure"]["reason"]
    assert _recorded(record) == []
    from embassy.assurance import status

    ie = embassy_of(status.status(world.dep, world.target()), "ie")
    assert ie["chain_problem"]["object"] == f"vault:ie/{forged_key}" and ie["head"] is None



ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("args", "says"), [
    (("restore-test", "-e", "se", "--target", "aws", "--outputs", "{bad}"), "[150]"),
    (("status", "--target", "aws", "--outputs", "{bad}"), "[150]"),
    (("status", "--target", "lab", "--outputs", "{bad}"), "--outputs is for --target aws, not --target lab"),
    (("restore-test", "-e", "se", "--target", "aws", "--inventory", "{bad}"), "--inventory is for --target site"),
    (("status", "--target", "site", "--outputs", "{bad}"), "--outputs is for --target aws, not --target site"),
])
def test_restore_test_and_status_check_the_aws_options_first(args: tuple[str, ...], says: str, tmp_path: Path) -> None:
    """Outputs that are not a stack's (here: not even JSON), or an option of another target: exit 2 with a HINT,
    before any role is assumed or host reached (no AWS identity exists in this environment)."""
    bad = tmp_path / "outputs.json"
    bad.write_text("{not json")
    env = {k: val for k, val in os.environ.items() if not k.startswith(("AWS_", "EMBASSY_AWS_"))}
    done = subprocess.run([str(ROOT / ".venv/bin/embassy"), *(a.replace("{bad}", str(bad)) for a in args),
                           "--stack", "production"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**env, "EMBASSY_SECRETS_DIR": str(tmp_path / "controller")})
    assert done.returncode == 2 and says in done.stderr and "\nHINT: " in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


# --------------------------------------------------------------------------- custody bundles on AWS

FAKE_HOME = r'''#!{python}
"""ssh standing in for home (on premises): records argv and input, signs what it is given with home's manifest key."""
''' + SSH_RECORDER + r'''import base64
from cryptography.hazmat.primitives import serialization
key = serialization.load_pem_private_key(Path(os.environ["FAKE_HOME_KEY"]).read_bytes(), None)
sys.stdout.write(base64.b64encode(key.sign(base64.b64decode(given))).decode())
'''


def fake_home(world: World) -> tuple[Path, dict[str, str]]:
    from cryptography.hazmat.primitives import serialization

    tools, record = world.folder / "home-bin", world.folder / "home-record"
    tools.mkdir()
    record.mkdir()
    (tools / "ssh").write_text(FAKE_HOME.format(python=sys.executable))
    (tools / "ssh").chmod(0o755)
    key = world.folder / "home-manifest.key"
    key.write_bytes(HOME_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key.chmod(0o600)
    return record, {"PATH": f"{tools}:{os.environ['PATH']}", "SSH_RECORD": str(record), "FAKE_HOME_KEY": str(key),
                    at.HOME_HOST_ENV: "admin@home.example.ee"}


def _restore_secrets(world: World) -> dict[str, str]:
    """The passphrases the deploy left in the controller's folder (what a bundle seals)."""
    from embassy.replication import secrets

    folder = world.target().controller_folder
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    made = {}
    for emb in world.dep.embassies:
        for name in (secrets.pgbackrest_secret(emb.name), secrets.restic_secret(emb.name)):
            value = os.urandom(24).hex()
            (folder / name).write_text(value + "\n")
            (folder / name).chmod(0o600)
            made[name] = value
    return made


def test_custody_init_on_aws_seals_into_each_vault_with_the_custody_role(world: World, tmp_path: Path) -> None:
    """`custody init --target aws`: home signs the headers over ssh (on premises), each bundle goes into its embassy's
    vault through that vault's custody role, under COMPLIANCE; read back with the restore role, opened with 2 of the
    3 sheets: the bundle names the restore role to assume and carries no key. Then the limits of each identity, and
    the host nation rewriting a bundle: refused naming the object."""
    from embassy import errors
    from embassy.custody import kit, vaultio

    made = _restore_secrets(world)
    record, env = fake_home(world)
    out = tmp_path / "kit"
    world.env.update(env)
    try:
        done = world.cli("custody", "init", "--stack", STACK, "-n", "3", "-k", "2", "--out", str(out), "--target",
                         "aws", "--outputs", str(world.outputs))
    finally:
        for key in env:
            del world.env[key]
    assert done.returncode == 0, done.stdout + done.stderr
    name = vaultio.object_key(STACK, 1)
    for embassy in world.buckets:
        assert f"stored: vault:{embassy}/{name} (lock COMPLIANCE" in done.stdout, done.stdout
    # Home was reached with plain ssh (checked host key, batch mode): one signature per embassy's header.
    calls = _recorded(record)
    assert len(calls) == len(world.buckets)
    assert calls[0][0][:9] == ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o",
                               "ConnectTimeout=20", "--", "admin@home.example.ee"]

    target = world.target()
    store = kit.TargetVaults(target, world.dep)
    texts = kit.read_shares([str(out / "official-1.txt"), str(out / "official-3.txt")], lambda: "")
    bundle = kit.open_bundle(world.dep, store, "de", texts)
    de = world.plan["outputs"]["embassies"]["de"]
    assert bundle.vault.restore_role_arn == de["restore_role_arn"] and bundle.vault.bucket == de["vault_bucket"]
    assert (bundle.vault.access_key_id, bundle.vault.secret_access_key) == ("", "")
    assert {p.value for p in bundle.pgbackrest + bundle.restic} == {
        made["pgbackrest-de.pass"], made["restic-de.pass"]}
    session = target.session("de", "reader")
    for text in (done.stdout, done.stderr, *(p.read_text() for p in out.iterdir())):
        assert session.secret_access_key not in text and session.session_token not in text

    # What each identity may not do (as far as moto enforces IAM: actions and resources, Allow and Deny).
    vault = target.vault("de")
    bucket = world.buckets["de"]
    reader, custody = s3_client(vault.client_spec("reader")), s3_client(vault.client_spec("custody"))
    envelope = reader.get_object(Bucket=bucket, Key=name)["Body"].read()

    def denied(call: Any) -> str:
        with pytest.raises(ClientError) as exc:
            call()
        return str(exc.value.response["Error"]["Code"])

    assert denied(lambda: reader.put_object(Bucket=bucket, Key=vaultio.object_key(STACK, 2), Body=envelope)) \
        == "AccessDenied"  # the restore role cannot write a bundle
    assert denied(lambda: custody.put_object(Bucket=bucket, Key=manifest.object_key(99), Body=b"{}")) == "AccessDenied"
    operator = world.moto.client("s3", world.moto.admin, de["region"])  # moto names this listing otherwise than IAM
    version = operator.list_object_versions(Bucket=bucket, Prefix=name)["Versions"][0]["VersionId"]
    assert denied(lambda: custody.delete_object(Bucket=bucket, Key=name, VersionId=version)) == "AccessDenied"
    assert denied(lambda: custody.put_object_retention(
        Bucket=bucket, Key=name, Retention={"Mode": "GOVERNANCE", "RetainUntilDate": dt.datetime.now(dt.UTC)})) \
        == "AccessDenied"
    # A second init is refused: the kit exists (read with the restore role from the vaults). Its HINT does not send
    # the operator to `custody rotate`, which AWS refuses.
    with pytest.raises(errors.UserError, match="already has a custody kit") as again:
        kit.issue(world.dep, target, store, target.controller_folder, tmp_path / "again", officials=3, threshold=2,
                  rotate=False, signer=HOME_KEY.sign)
    assert again.value.hint is not None and "not built for AWS" in again.value.hint

    # The host nation rewrites the bundle (a new version of its key: one byte of the sealed content changed, home's
    # signature kept): no bundle of de opens, and the object is named.
    doc = json.loads(envelope)
    ct = doc["ciphertext"]
    doc["ciphertext"] = ct[:10] + ("A" if ct[10] != "A" else "B") + ct[11:]
    _put(world, "de", name, json.dumps(doc).encode())
    with pytest.raises((errors.BundleInvalid, errors.SignatureInvalid)) as refused:
        kit.open_bundle(world.dep, store, "de", texts)
    assert f"vault:de/{name}" in refused.value.message and refused.value.code == errors.EXIT_FINDING


def test_a_bundle_the_vault_serves_back_otherwise_is_not_taken_as_stored(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host nation answers the read-back of a just-stored bundle with other bytes (no emulator here lies on
    demand: a vault stand-in that stores and serves something else): the store fails naming the key."""
    import io

    from embassy.custody import vaultio

    class Lying:
        def put_object(self, **_kw: Any) -> None:
            return None

        def get_object(self, **_kw: Any) -> dict[str, Any]:
            return {"Body": io.BytesIO(b'{"other": 1}'), "ObjectLockMode": "COMPLIANCE"}

    monkeypatch.setattr(vaultio, "s3_client", lambda _spec: Lying())
    got = vaultio.put({"bucket": "b", "key": "custody/rehearsal/bundle-v0001.json"}, b'{"sealed": 1}')
    assert got["ok"] is False and "custody/rehearsal/bundle-v0001.json" in got["error"]
    assert "other bytes" in got["error"]


def test_the_host_reads_with_a_handed_session_only_when_it_is_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the host, a whole session on the input (key, secret and token: a role's) is what the restore test reads the
    vault with; static keys in the environment without a token (anyone's) never replace the deploy's file."""
    for name in restoretest.SESSION_ENV:
        monkeypatch.delenv(name, raising=False)
    assert restoretest.handed_session() is None
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIASTATICSTATIC0000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "static")
    assert restoretest.handed_session() is None
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token")
    assert restoretest.handed_session() == {"access_key_id": "AKIASTATICSTATIC0000", "secret_access_key": "static",
                                            "session_token": "token"}
