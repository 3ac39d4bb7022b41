"""Restore secrets on AWS: a key generation's keys reach pgBackRest and restic only in their environment.

The adversary: the host nation, which holds the enclave's disks and reads them after (or during) a restore. So no
restore secret (a pgBackRest passphrase, a restic password, the restore role's session) may be written to a host
path, nor appear in an argv (every local user reads argvs in /proc, on the controller and on the host).

The emulator is moto's server (tests/unit/aws_moto.py) with the rehearsal plan's vaults and roles, a chain of five
rounds in every vault: rounds 1-3 of key generation 1, rounds 4-5 of generation 2 (a `custody rotate` between).
The enclave is a stand-in `ssh` (no instance, no SSM here): it records every argv and input the controller hands
it and answers as a host whose files hold generation 2's secrets (test 1) or none (test 2, after a withdraw). It
models what pgBackRest and restic read: a variable handed over in the environment wins over the host's files
(measured on pgBackRest 2.45 for its options, README "Host commands on AWS"; embassy-restic's own rule for restic),
and it fails a command whose generation's passphrase is wrong, or whose vault session is missing. So a restore
completes only if every command that reads the vault got the right generation's keys.

One shortcut, said where it is taken: the controller's check of the objects' locks (HEAD) is replaced by a pass,
because moto refuses HEAD to a role session (test_aws_moto.py says so); everything else of `verify` runs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from embassy.custody import kit
from embassy.custody import restore as custody_restore
from embassy.drill import restore as lib
from embassy.replication import dataplane, manifest, secrets
from embassy.replication import verify as vault_verify

from .test_aws_moto import HOME_KEY, STACK, World, chained_world

EMBASSY = "ie"  # cold: a restore from its vault (pgBackRest, restic), not a standby's promotion
ROUNDS = 5
ROTATED_AT = 4  # rounds from 4 on name key generation 2's repositories
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=40)
LABELS = {1: "20261202-100000F", 2: "20261202-110000F"}
SNAPSHOTS = {1: "a1" * 32, 2: "b2" * 32}
LSN = "0/2FFFFF0"
DIGESTS = {"population": {"construction": "sum-sha256", "lsn": LSN,
                          "tables": {"persons": {"rows": 3, "sha256": "1" * 64}}},
           "land_register": {"construction": "sum-sha256", "lsn": LSN,
                             "tables": {"deeds": {"rows": 2, "sha256": "2" * 64}}}}
FILES_DIGEST = {"files": 3, "bytes": 120, "merkle_root": "3" * 64}
# The environment variables whose values are secrets (the session's and a key generation's).
SECRET_NAMES = {"PGBACKREST_REPO1_S3_KEY_SECRET", "PGBACKREST_REPO1_S3_TOKEN", "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN", "PGBACKREST_REPO1_CIPHER_PASS", "RESTIC_PASSWORD"}


def generation(n: int) -> int:
    return 2 if n >= ROTATED_AT else 1


def round_time(n: int) -> dt.datetime:
    return NOW + dt.timedelta(minutes=5 * n)


def _body(n: int, previous: str | None, embassy: str) -> dict[str, Any]:
    g = generation(n)
    pg = {"kind": "postgres", "repo_path": dataplane.pgbackrest_path(g), "backup_label": LABELS[g],
          "wal": {"first": "000000010000000000000002", "last": "000000010000000000000009"}}
    return {"format": manifest.FORMAT, "stack": STACK, "state": {"name": "Estonia", "code": "EE"},
            "embassy": embassy, "mode": "warm" if embassy != "ie" else "cold", "round": n,
            "time": round_time(n).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "previous_sha256": previous,
            "registers": [{"name": "population", **pg, "digest": DIGESTS["population"]},
                          {"name": "land-register", **pg, "digest": DIGESTS["land_register"]},
                          {"name": "court-files", "kind": "files", "repository": f"{dataplane.restic_base(g)}/court-files",
                           "snapshot_id": SNAPSHOTS[g], "digest": FILES_DIGEST}]}


STAND_IN = r'''#!{python}
"""ssh standing in for the SSM session to the enclave: records argv and input, answers as the host would."""
import json, os, re, shlex, sys, time
from pathlib import Path
record = Path(os.environ["SSH_RECORD"])
name = f"{{time.monotonic_ns():020d}}-{{os.getpid()}}"
(record / f"{{name}}.argv").write_bytes(b"".join(a.encode() + b"\0" for a in ["ssh", *sys.argv[1:]]))
data = sys.stdin.read()
(record / f"{{name}}.input").write_text(data)
host = json.loads(Path(os.environ["STAND_IN_HOST"]).read_text())
remote = sys.argv[-1]
env = {{}}
if remote == "sudo sh -s":  # a data-plane command: the session (and any key) exported, then the command
    for line in data.splitlines():
        if line.startswith("export "):
            key, _, value = shlex.split(line[len("export "):])[0].partition("=")
            env[key] = value
    command = data.split("\n{{\n", 1)[1].rsplit("\n}} </dev/null", 1)[0]
else:  # sh -c COMMAND: a command with its own input, no session
    command = shlex.split(remote)[2]
disk = host["on_disk"]  # the generation whose secrets the host's own files hold (None: withdrawn)

def gen_of(path):
    m = re.search(r"-g(\d+)", path or "")
    return int(m.group(1)) if m else 1

def use(tool):
    """What pgBackRest or restic would read: the environment over the host's files. Exit 1 if it cannot."""
    if tool == "pgbackrest":
        path = env.get("PGBACKREST_REPO1_PATH") or (host["pg_path"][str(disk)] if disk else "")
        secret = env.get("PGBACKREST_REPO1_CIPHER_PASS") or (host["passes"][str(disk)]["pgbackrest"] if disk else "")
        session = bool(env.get("PGBACKREST_REPO1_S3_TOKEN"))
    else:
        path = env.get("EMBASSY_RESTIC_FOLDER") or (host["restic"][str(disk)] if disk else "")
        secret = env.get("RESTIC_PASSWORD") or (host["passes"][str(disk)]["restic"] if disk else "")
        session = bool(env.get("AWS_SESSION_TOKEN"))
    g = gen_of(path)
    ok = session and bool(path) and secret == host["passes"][str(g)][tool]
    with (record / "uses.jsonl").open("a") as fh:
        fh.write(json.dumps({{"tool": tool, "generation": g, "ok": ok, "session": session,
                              "command": command[:80]}}) + "\n")
    if not ok:
        print(f"ERROR: [095]: {{tool}} cannot read generation {{g}} (session {{session}})", file=sys.stderr)
        sys.exit(1)
    return g

def info(g):
    return json.dumps([{{"backup": [{{"label": host["labels"][str(g)], "lsn": {{"start": "0/1000028", "stop": "0/1000100"}}}}],
                        "archive": [{{"max": "0000000100000000000000FF"}}]}}])

c = command
if c == "true" or "systemctl stop embassy-state-restored" in c or "recovery_target/d" in c or "systemd-run" in c:
    pass
elif c.startswith("ls -1 /usr/lib/postgresql"):
    print("15")
elif "PGBACKREST_REPO1_PATH:-" in c:  # check_generation: what the host's pgBackRest and restic read
    print(env.get("PGBACKREST_REPO1_PATH") or (host["pg_path"][str(disk)] if disk else ""))
    print(env.get("EMBASSY_RESTIC_FOLDER") or (host["restic"][str(disk)] if disk else ""))
elif " verify 2>&1" in c:
    g = use("pgbackrest")
    print("stanza: home\nstatus: ok\n")
    print(info(g))
elif "--output=json info" in c:
    print(info(use("pgbackrest")))
elif "embassy-restic" in c and " check " in c:
    g = use("restic")
    print("no errors were found")
    print("embassy: restic check exit 0")
    print(json.dumps([{{"id": host["snapshots"][str(g)]}}]))
elif "embassy-restore-postgres" in c or "archive-get" in c:
    use("pgbackrest")
elif "embassy-restore-files" in c:
    use("restic")
elif "install -o postgres -g postgres -m 600 /dev/stdin" in c or "install -m 644 /dev/stdin" in c:
    pass  # a file written: its content is the recorded input
elif "pg_ctl" in c:
    if env.get("PGBACKREST_REPO1_CIPHER_PASS") or not re.search(r" (start|restart)$", c):
        use("pgbackrest")  # recovery's restore_command runs archive-get in the postmaster's environment
    with (record / "uses.jsonl").open("a") as fh:
        fh.write(json.dumps({{"tool": "pg_ctl", "keys": sorted(k for k in env if "CIPHER" in k or "TOKEN" in k),
                              "command": c[-40:]}}) + "\n")
elif "pg_get_wal_replay_pause_state" in c:
    print("paused")
elif "pg_is_in_recovery()" in c:
    print("f")
elif "replication.digest postgres" in c:
    print(json.dumps(host["digests"][shlex.split(c.split("replication.digest postgres", 1)[1])[0]]))
elif "replication.digest files" in c:
    print(json.dumps(host["files_digest"]))
elif ".history" in c:
    print("1\t0/3000000\tno recovery target specified")
elif "pg_waldump" in c:
    pass
elif "datname ||" in c:
    print("population|16384\nland_register|16385")
elif "embassy_monitor" in c:
    print("2026-12-07 20:00:00+00")
elif c.startswith("python3 - "):
    print(json.dumps({{"/health": [200, {{"status": "ok"}}]}}))
else:
    with (record / "unknown.txt").open("a") as fh:
        fh.write(c + "\n---\n")
'''


@contextlib.contextmanager
def rotated_world(rehearsal_plan: dict[str, Any], folder: Path) -> Iterator[World]:
    """moto with the plan applied, the controller's environment, the rotated chain in every vault (through each
    embassy's agent role), the controller's folder with both generations' secrets, and a custody kit sealed into
    the vaults through the custody roles (home's signature by its key, as `custody init` gets it from home)."""
    with chained_world(rehearsal_plan, folder, ROUNDS, _body) as w:
        target = w.target()
        controller = target.controller_folder
        controller.mkdir(mode=0o700, parents=True, exist_ok=True)
        for emb in w.dep.embassies:
            for g in (1, 2):
                for name in (secrets.pgbackrest_secret(emb.name, g), secrets.restic_secret(emb.name, g)):
                    (controller / name).write_text(os.urandom(24).hex() + "\n")
                    (controller / name).chmod(0o600)
            secrets.record_generation(controller, emb.name, 2, round_time(ROTATED_AT - 1).isoformat())
        kit.issue(w.dep, target, kit.TargetVaults(target, w.dep), controller, folder / "kit", officials=3, threshold=2,
                  rotate=False, signer=HOME_KEY.sign)
        yield w


@pytest.fixture(scope="module")
def world(rehearsal_plan: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with rotated_world(rehearsal_plan, tmp_path_factory.mktemp("aws-keys")) as w:
        yield w


def _passes(world: World) -> dict[int, dict[str, str]]:
    folder = world.target().controller_folder
    return {g: {"pgbackrest": (folder / secrets.pgbackrest_secret(EMBASSY, g)).read_text().strip(),
                "restic": (folder / secrets.restic_secret(EMBASSY, g)).read_text().strip()} for g in (1, 2)}


def _stand_in(world: World, name: str, on_disk: int | None, passes: dict[int, dict[str, str]],
              mp: pytest.MonkeyPatch) -> Path:
    """The stand-in enclave on the PATH (with never-run aws and session-manager-plugin); its record folder."""
    tools, record = world.folder / f"{name}-bin", world.folder / f"{name}-record"
    tools.mkdir()
    record.mkdir()
    (tools / "ssh").write_text(STAND_IN.format(python=sys.executable))
    for tool in ("aws", "session-manager-plugin"):  # the stand-in ssh never starts its ProxyCommand
        (tools / tool).write_text("#!/bin/sh\necho not run >&2\nexit 99\n")
    for path in tools.iterdir():
        path.chmod(0o755)
    host = {"on_disk": on_disk, "passes": {str(g): p for g, p in passes.items()},
            "pg_path": {str(g): dataplane.pgbackrest_path(g) for g in (1, 2)},
            "restic": {str(g): dataplane.restic_base(g) for g in (1, 2)},
            "labels": {str(g): label for g, label in LABELS.items()},
            "snapshots": {str(g): s for g, s in SNAPSHOTS.items()}, "digests": DIGESTS, "files_digest": FILES_DIGEST}
    (world.folder / f"{name}-host.json").write_text(json.dumps(host))
    mp.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    mp.setenv("SSH_RECORD", str(record))
    mp.setenv("STAND_IN_HOST", str(world.folder / f"{name}-host.json"))
    # moto refuses HEAD to a role session: the locks of the objects a restore relies on are not checkable here.
    mp.setattr(vault_verify, "check_locks", lambda dep, where, embassy, head, result: result.check(
        f"vault:{embassy}/locks", True, detail="not checked: moto refuses HEAD to a role session"))
    return record


def _calls(record: Path) -> list[tuple[list[str], str]]:
    return [([a.decode() for a in p.read_bytes().split(b"\0")[:-1]], p.with_suffix(".input").read_text())
            for p in sorted(record.glob("*.argv"))]


def _uses(record: Path) -> list[dict[str, Any]]:
    path = record / "uses.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _exports(script: str) -> dict[str, str]:
    return {k: v for line in script.splitlines() if line.startswith("export ")
            for k, _, v in [shlex.split(line[len("export "):])[0].partition("=")]}


def _no_secret_leaves_the_environment(calls: list[tuple[list[str], str]], known: list[str]) -> int:
    """No secret in any argv; none in what a command without a session reads (a file written to the host, or code);
    in a session's script, only on its `export` lines, never in the command nor named by it. Returns how many
    scripts handed a key generation's secrets over."""
    handed = [v for _, script in calls for k, v in _exports(script).items() if k in SECRET_NAMES]
    values = {v for v in [*known, *handed] if v}
    assert len(values) >= len(known)
    keyed = 0
    for argv, data in calls:
        assert not any(v in part for part in argv for v in values), f"a secret in an argv: {argv[-1][:120]}"
        if argv[-1] != "sudo sh -s":
            assert not any(v in data for v in values), f"a secret written to the host by `{argv[-1][:160]}`"
            continue
        command = data.split("\n{\n", 1)[1]
        assert not any(v in command for v in values), f"a secret in the command: {command[:160]}"
        assert not any(name in command for name in SECRET_NAMES), f"a command reads a secret variable: {command[:160]}"
        assert all(line.startswith("export ") for line in data.split("\nsudo() {", 1)[0].splitlines())
        keyed += "PGBACKREST_REPO1_CIPHER_PASS" in _exports(data) or "RESTIC_PASSWORD" in _exports(data)
    return keyed


def test_a_restore_to_an_older_generation_writes_no_key_on_the_host(world: World) -> None:
    """`restore --target aws --target-time T` with T before the rotation: the manifest names generation 1, the host's
    files hold generation 2. Generation 1's passphrase and restic password reach pgBackRest and restic only in their
    environment (the SSM session's input), beside the restore role's session; nothing is written back afterwards
    (nothing was written); the open cluster is restarted without them."""
    passes = _passes(world)
    with pytest.MonkeyPatch.context() as mp:
        record = _stand_in(world, "older", 2, passes, mp)
        target = world.target()
        keyring = custody_restore.controller_keyring(world.dep, target, EMBASSY)
        when = round_time(ROTATED_AT) - dt.timedelta(minutes=2)
        out = lib.restore(world.dep, target, EMBASSY, target_time=when, keyring=keyring, accept_unanchored=True)
    calls, uses = _calls(record), _uses(record)
    assert not (record / "unknown.txt").exists(), (record / "unknown.txt").read_text()
    assert out.ok, (out.error.render() if out.error else "", [s.name for s in out.steps], uses)
    assert out.manifest is not None and out.manifest.round == ROTATED_AT - 1
    assert all(r.verified and r.restored for r in out.registers)
    steps = [s.name for s in out.steps]
    assert any(s.startswith("key generation 1: its secrets handed to enclave-ie's pgBackRest and restic") for s in steps)
    assert not any(s.startswith("write key generation") for s in steps), steps
    assert "restart the restored cluster without the restore's keys in its environment" in steps
    # The head's checks read the host's own generation 2; every read after them, generation 1 with its keys handed.
    assert [u["generation"] for u in uses if u["tool"] != "pg_ctl"][:2] == [2, 2]
    after = [u for u in uses if u["tool"] != "pg_ctl"][2:]
    assert after and all(u["ok"] and u["generation"] == 1 and u["session"] for u in after), after
    assert {u["tool"] for u in after} == {"pgbackrest", "restic"}
    ctl = [u for u in uses if u["tool"] == "pg_ctl"]
    assert ctl[-1]["keys"] == [] and ctl[-1]["command"].endswith("restart"), ctl  # the bare restart: no key, no session
    assert all("PGBACKREST_REPO1_CIPHER_PASS" in u["keys"] for u in ctl[:-1]), ctl
    keyed = _no_secret_leaves_the_environment(calls, [*passes[1].values(), *passes[2].values()])
    assert keyed >= 5  # the generation's checks, pgBackRest's info and restore, pg_ctl, restic's restore, archive-get
    # The files written to the host (the scratch cluster's configuration, the service's code) hold no key.
    written = [data for argv, data in calls if argv[-1] != "sudo sh -s" and "/dev/stdin" in argv[-1]]
    assert written and not any(p in data for data in written for p in [*passes[1].values(), *passes[2].values()])


def test_restore_with_shares_on_aws_hands_the_bundles_keys_over_and_writes_none(world: World) -> None:
    """`restore --shares --target aws`: no restore secret left on the controller nor on the host (withdrawn). The
    bundle is read from the vault with the restore role and opened with 2 of 3 sheets; nothing is written to the host
    (no `apply`); the head (generation 2) and a point before the rotation (generation 1) are each restored with the
    bundle's keys of that generation, handed over in the environment only."""
    passes = _passes(world)
    folder = world.target().controller_folder
    kept = {p: p.read_text() for p in folder.glob("*.pass")}
    for p in kept:
        p.unlink()
    try:
        with pytest.MonkeyPatch.context() as mp:
            record = _stand_in(world, "shares", None, passes, mp)
            target = world.target()
            texts = kit.read_shares([str(world.folder / "kit" / "official-1.txt"),
                                     str(world.folder / "kit" / "official-3.txt")], lambda: "")
            opened: list[object] = []
            keyring = custody_restore.with_shares(world.dep, target, EMBASSY, target.embassy_hosts(EMBASSY), texts,
                                                  lambda _m: None, opened=opened)
            assert _calls(record) == []  # opening the bundle reached no host and wrote nothing there
            assert keyring.hand_over == 2
            head = lib.restore(world.dep, target, EMBASSY, keyring=keyring, accept_unanchored=True)
            head_uses = len(_uses(record))
            when = round_time(ROTATED_AT) - dt.timedelta(minutes=2)
            older = lib.restore(world.dep, target, EMBASSY, target_time=when, keyring=keyring, accept_unanchored=True)
    finally:
        for p, text in kept.items():
            p.write_text(text)
            p.chmod(0o600)
    calls, uses = _calls(record), _uses(record)
    assert not (record / "unknown.txt").exists(), (record / "unknown.txt").read_text()
    for out, round_ in ((head, ROUNDS), (older, ROTATED_AT - 1)):
        assert out.ok, (out.error.render() if out.error else "", [s.name for s in out.steps])
        assert out.manifest is not None and out.manifest.round == round_
    # The host holds no key: every read of the vault had one handed over, the head's verify included.
    reads = [u for u in uses if u["tool"] != "pg_ctl"]
    assert reads and all(u["ok"] and u["session"] for u in reads)
    assert {u["generation"] for u in uses[:head_uses] if u["tool"] != "pg_ctl"} == {2}
    assert [u["generation"] for u in reads if u["tool"] == "pgbackrest"][-1] == 1
    keyed = _no_secret_leaves_the_environment(calls, [*passes[1].values(), *passes[2].values()])
    assert keyed >= 10


def test_the_host_role_writes_a_new_restore_test_record_and_nothing_else(world: World, tmp_path: Path) -> None:
    """Item 3's decision, against moto: the scheduled restore test's record is written by the host itself (it runs
    there alone) with the stack's host role, which may create an object under restore-tests/ of its own vault and
    nothing more. The host's own writer (replication.restoretest.record) sends If-None-Match: a second write of the
    same record is refused by the emulator (412); a write elsewhere, a delete, a retention change are AccessDenied.

    Not shown here: that AWS refuses a put *without* If-None-Match (the Deny `NeverReplaceARecord`) and every put
    outside restore-tests/ by the Deny `WriteOnlyRestoreTestRecords` (NotResource): moto takes neither as AWS does,
    so both are left out of what it gets (below); the plan carries them (test_stack_sites.py), EMB-HST-01 requires
    the first. Outside the prefix, the put is refused here by the Allow's resource alone (no Allow matches)."""
    from botocore.exceptions import ClientError

    from embassy.replication import restoretest

    from .aws_moto import ACCOUNT, CONTROLLER_USER, _by, with_moto_names

    plan, moto = world.plan, world.moto
    iam = moto.client("iam", moto.admin)
    role = _by(plan, "aws:iam/role:Role", f"{EMBASSY}-host")
    doc = _by(plan, "aws:iam/rolePolicy:RolePolicy", f"{EMBASSY}-host-vault-read")
    assert role is not None and doc is not None
    # The instance profile's trust (ec2.amazonaws.com) is played by the controller user, as the key administrators are.
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {
        "AWS": f"arn:aws:iam::{ACCOUNT}:user/{CONTROLLER_USER}"}}]}
    iam.create_role(RoleName="ie-host-test", AssumeRolePolicyDocument=json.dumps(trust))
    # Two Deny statements moto cannot take as AWS does (measured with moto 5.2.6): it does not evaluate conditions (the
    # Deny of a put without If-None-Match would deny every put), and a Deny with NotResource makes it *allow* the put
    # outside the Allow's resource (a put under manifests/ passed with it, was AccessDenied without it). Both go to
    # moto left out; what remains (the Allow on restore-tests/* and the Deny of every other write) is the plan's.
    policy = json.loads(doc["inputs"]["policy"])
    left_out = [st["Sid"] for st in policy["Statement"] if "Condition" in st or "NotResource" in st]
    assert left_out == ["WriteOnlyRestoreTestRecords", "NeverReplaceARecord"]
    policy["Statement"] = [st for st in policy["Statement"] if st["Sid"] not in left_out]
    iam.put_role_policy(RoleName="ie-host-test", PolicyName="host-vault-read",
                        PolicyDocument=with_moto_names(json.dumps(policy)))
    region = plan["outputs"]["embassies"][EMBASSY]["region"]
    sts = moto.client("sts", moto.controller, region)
    got = sts.assume_role(RoleArn=f"arn:aws:iam::{ACCOUNT}:role/ie-host-test", RoleSessionName="host")["Credentials"]
    host = {"access_key_id": got["AccessKeyId"], "secret_access_key": got["SecretAccessKey"],
            "session_token": got["SessionToken"]}
    signing = tmp_path / "signing.pem"
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    signing.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    bucket = world.buckets[EMBASSY]
    # As the AWS deploy writes it (deploy_embassy.restore_test_config with the inventory's instance-role writer).
    config = {"embassy": EMBASSY, "signing_key": str(signing),
              "vault": {"endpoint": moto.url, "ca_file": moto.ca_file, "region": region, "bucket": bucket,
                        "writer": restoretest.INSTANCE_ROLE, "create_only": True}}
    body = {"time": "2026-12-07T20:00:00.000000Z", "passed": True}
    # `restore-test --target aws` hands the restore role's session to the host's process: the writer must not take it
    # (that role cannot write), only the instance role the metadata service serves.
    restore = world.target().session(EMBASSY, "reader").parts()
    with instance_metadata(host) as imds, pytest.MonkeyPatch.context() as mp:
        mp.setenv(restoretest.METADATA_ENDPOINT_ENV, imds)
        for name, part in (("AWS_ACCESS_KEY_ID", "access_key_id"), ("AWS_SECRET_ACCESS_KEY", "secret_access_key"),
                           ("AWS_SESSION_TOKEN", "session_token")):
            mp.setenv(name, restore[part])
        key = restoretest.record(config, body)
        with pytest.raises(ClientError) as again:  # the same record once more: S3 keeps the first, writes no version
            restoretest.record(config, {**body, "passed": False})
        # The setting, not the endpoint, decides: off, the writer sends no If-None-Match (moto then keeps a second
        # version of the same key; AWS's NeverReplaceARecord, left out of moto above, would refuse the put).
        off = {**config, "vault": {**config["vault"], "create_only": False}}
        other = {**body, "time": "2026-12-07T21:00:00.000000Z"}
        replaced = [restoretest.record(off, other), restoretest.record(off, {**other, "passed": False})]
    assert key.startswith(restoretest.RECORD_PREFIX)
    operator = moto.client("s3", moto.admin, region)
    assert operator.get_object(Bucket=bucket, Key=key)["ObjectLockMode"] == "COMPLIANCE"
    assert again.value.response["Error"]["Code"] in ("PreconditionFailed", "412"), again.value.response
    assert len(operator.list_object_versions(Bucket=bucket, Prefix=key).get("Versions", [])) == 1
    assert replaced[0] == replaced[1] != key
    assert len(operator.list_object_versions(Bucket=bucket, Prefix=replaced[0]).get("Versions", [])) == 2
    s3 = moto.client("s3", host, region)

    def denied(call: Any) -> str:
        with pytest.raises(ClientError) as exc:
            call()
        return str(exc.value.response["Error"]["Code"])

    assert denied(lambda: s3.put_object(Bucket=bucket, Key="manifests/99999999.json", Body=b"{}")) == "AccessDenied"
    assert denied(lambda: s3.put_object(Bucket=bucket, Key="custody/rehearsal/bundle-v9999.json", Body=b"{}")) \
        == "AccessDenied"
    assert denied(lambda: s3.delete_object(Bucket=bucket, Key=key)) == "AccessDenied"
    assert denied(lambda: s3.put_object_retention(Bucket=bucket, Key=key, Retention={
        "Mode": "GOVERNANCE", "RetainUntilDate": dt.datetime.now(dt.UTC) + dt.timedelta(days=1)})) == "AccessDenied"
    assert s3.get_object(Bucket=bucket, Key=manifest.object_key(1))["Body"].read()  # and it reads its vault
    assert denied(lambda: moto.client("s3", restore, region).put_object(  # what the writer was handed: refused
        Bucket=bucket, Key="restore-tests/handed.json", Body=b"{}", IfNoneMatch="*")) == "AccessDenied"


@contextlib.contextmanager
def instance_metadata(session: dict[str, str]) -> Iterator[str]:
    """A stand-in of EC2's instance metadata service (IMDSv2: a token, then the role's name and its credentials) on
    127.0.0.1, serving the host role's session as an instance profile would; its URL."""
    import http.server
    import threading

    role = "ie-host-test"
    body = json.dumps({"Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": session["access_key_id"],
                       "SecretAccessKey": session["secret_access_key"], "Token": session["session_token"],
                       "Expiration": (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")})
    answers = {"/latest/meta-data/iam/security-credentials/": role,
               f"/latest/meta-data/iam/security-credentials/{role}": body}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            self._answer("token-1" if self.path == "/latest/api/token" else None)

        def do_GET(self) -> None:
            ok = self.headers.get("X-aws-ec2-metadata-token") == "token-1"
            self._answer(answers.get(self.path) if ok else None)

        def _answer(self, text: str | None) -> None:
            data = (text or "").encode()
            self.send_response(200 if text is not None else 404)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
