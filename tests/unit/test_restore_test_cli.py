"""`embassy restore-test` without a lab: options (exit 2 with a HINT), the host's answer read as untrusted, the
stack key data-embassy:restore_tests validated like every key, and what the embassy deploy writes for its timer."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from embassy import model
from embassy.assurance import restoretest as lib
from embassy.replication import dataplane
from embassy.replication import restoretest as host
from embassy.replication.deploy_embassy import restore_test_config
from embassy.replication.pgmajor import Postgres

from .incli import embassy

ROOT = Path(__file__).resolve().parents[2]
DEP = model.load_stack("rehearsal", ROOT)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return embassy(*args)


@pytest.mark.parametrize("args", [("--point", "sometimes"), ("--window-days", "0"), ("--window-days", "99999")])
def test_bad_options_exit_2_with_a_hint(args: tuple[str, ...]) -> None:
    done = cli("restore-test", "--stack", "rehearsal", "--embassy", "de", *args)
    assert done.returncode == 2 and "HINT:" in done.stderr, done.stderr


def result(**over: Any) -> dict[str, Any]:
    chosen = host.manifest.Verified("manifests/0000000008.json", {"round": 8, "time": "2026-12-06T10:00:00Z"}, "b" * 64)
    regs = [{"name": "population", "kind": "postgres", "digest_ok": True, "milliseconds": 4000, "rto_seconds": 300,
             "within_rto": True}]
    body = host.result({"stack": "rehearsal", "embassy": "de"}, chosen, dt.datetime(2026, 12, 7, tzinfo=dt.UTC), 4.5,
                       regs, None, "cli")
    return {**body, **over}


def test_the_hosts_result_is_the_issues_json() -> None:
    out = lib.parse_host_output(DEP, "de", "enclave-de", "noise\n" + json.dumps(result(record="restore-tests/x.json")), "")
    assert out["passed"] and out["record"] == "restore-tests/x.json" and out["seconds"] == 4.5
    assert out["point"] == {"round": 8, "time": "2026-12-06T10:00:00Z", "manifest": "manifests/0000000008.json"}
    assert out["registers"][0] == {"name": "population", "kind": "postgres", "digest_ok": True, "seconds": 4.0,
                                   "rto_seconds": 300, "within_rto": True}


def test_a_passed_test_that_was_not_recorded_fails() -> None:
    out = lib.parse_host_output(DEP, "de", "enclave-de", json.dumps(result(record=None)), "AccessDenied")
    assert not out["passed"] and out["failure"]["object"] == "vault:de/restore-tests/"
    assert "AccessDenied" in out["failure"]["reason"]


@pytest.mark.parametrize("stdout", ["", "not json", json.dumps({"embassy": "de"}), "[1, 2]"])
def test_no_result_from_the_host_fails_naming_it(stdout: str) -> None:
    out = lib.parse_host_output(DEP, "de", "enclave-de", stdout, "Traceback: boom")
    assert not out["passed"] and out["failure"]["object"] == "enclave-de"


def test_a_result_of_another_embassy_is_no_result() -> None:
    out = lib.parse_host_output(DEP, "de", "enclave-de", json.dumps(result(embassy="se", record="r")), "")
    assert not out["passed"] and out["failure"]["object"] == "enclave-de"


# ---------------------------------------------------------------- data-embassy:restore_tests


def values(**restore_tests: Any) -> dict[str, Any]:
    return {**model.read_stack_values(model.stack_file("rehearsal", ROOT)), "restore_tests": restore_tests}


def test_defaults_weekly_random_thirty_days() -> None:
    rt = DEP.restore_tests
    assert (rt.schedule, rt.point, rt.window_days) == ("weekly", "random", 30)
    dep = model._from_values("x", values(schedule="daily", point="latest", window_days=7), "x")
    assert (dep.restore_tests.schedule, dep.restore_tests.point, dep.restore_tests.window_days) == ("daily", "latest", 7)


@pytest.mark.parametrize(("given", "path"), [
    ({"schedule": "weekly\nExecStart=/bin/sh"}, "restore_tests.schedule"),  # into a unit file: one line only
    ({"schedule": ""}, "restore_tests.schedule"),
    ({"point": "oldest"}, "restore_tests.point"),
    ({"window_days": 0}, "restore_tests.window_days"),
    ({"window_days": "30"}, "restore_tests.window_days"),
    ({"every": "week"}, "restore_tests.every"),
])
def test_bad_values_name_their_key_path(given: dict[str, Any], path: str) -> None:
    with pytest.raises(model.ConfigInvalid) as err:
        model._from_values("x", values(**given), "x")
    assert any(i.path == f"data-embassy:{path}" for i in err.value.issues), [i.path for i in err.value.issues]


# ---------------------------------------------------------------- what the embassy deploy writes


class _Vault:
    url, bucket, region = "https://vault-ie.lab:8443", "rehearsal-ie-vault", "us-east-1"


def test_the_host_config_holds_the_embassys_registers_and_no_secret() -> None:
    config = restore_test_config(DEP, "ie", _Vault(), "PUBLIC KEY PEM")
    assert config["embassy"] == "ie" and config["retention_days"] == DEP.embassy("ie").retention_days
    assert [r["name"] for r in config["registers"]] == [r.name for r in DEP.registers_in_restore_order()]
    assert {r["name"]: r.get("database") for r in config["registers"]}["population"] == "population"
    text = json.dumps(config)
    assert "secret_access_key" not in text and "PRIVATE KEY" not in text  # paths to credentials and key only
    assert config["vault"]["writer_credentials"].startswith("/etc/embassy/restore-test/")


def test_the_deploy_says_who_writes_the_record_and_whether_only_new_keys() -> None:
    """The lab and a site: the agent's keys in a file, plain puts (what their vaults take). AWS: the host's instance
    role, create-only (If-None-Match: *, which the stack's host role requires), no writer file named. Both are the
    deploy's explicit settings; a writer it does not know is refused."""
    lab = restore_test_config(DEP, "ie", _Vault(), "PEM")["vault"]
    assert (lab["writer"], lab["create_only"]) == (host.WRITER_FILE, False) and "writer_credentials" in lab
    aws = restore_test_config(DEP, "ie", _Vault(), "PEM", host.INSTANCE_ROLE)["vault"]
    assert (aws["writer"], aws["create_only"]) == (host.INSTANCE_ROLE, True) and "writer_credentials" not in aws
    with pytest.raises(ValueError):
        restore_test_config(DEP, "ie", _Vault(), "PEM", "agent-keys")


def test_the_aws_inventory_has_the_instance_role_write_the_records(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """inventories/aws.py, read with a stand-in pulumi: every enclave host's data names the instance role as the
    restore test's writer (the embassy deploy then writes create-only and no writer keys); home's names none."""
    import runpy

    outputs = {"embassies": {e.name: {"region": e.region, "mode": e.mode.value, "vault_bucket": f"{e.name}-vault",
                                      "host_instance_ids": [f"i-0{e.name}"], "host_private_ips": ["10.64.1.10"]}
                             for e in DEP.embassies}}
    (tmp_path / "outputs.json").write_text(json.dumps(outputs))
    (tmp_path / "pulumi").write_text(f"#!/bin/sh\ncat {tmp_path}/outputs.json\n")
    (tmp_path / "pulumi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setenv("EMBASSY_STACK", DEP.stack)
    monkeypatch.setenv("EMBASSY_HOME_HOST", "admin@home.example.ee")
    inventory = runpy.run_path(str(ROOT / "inventories" / "aws.py"))
    writers = {data["embassy"]: data.get("restore_test_writer") for _iid, data in inventory["embassies"]}
    assert writers == {e.name: host.INSTANCE_ROLE for e in DEP.embassies}
    assert [data.get("restore_test_writer") for _h, data in inventory["home"]] == [None]


@pytest.mark.parametrize("endpoint", ["https://s3.eu-central-1.amazonaws.com", "https://vault-ie.lab:8443",
                                      "https://s3.eu-central-1.amazonaws.com.attacker.example",
                                      "https://notamazonaws.com", "https://s3.cn-north-1.amazonaws.com.cn"])
def test_create_only_is_the_configs_setting_whatever_the_endpoint_looks_like(endpoint: str) -> None:
    """The adversary: whoever picks the vault's endpoint name (a site's DNS, an emulator, a look-alike of AWS's) and
    would switch If-None-Match off where the host role needs it, or on where a vault refuses it. The endpoint's name
    decides nothing; a config without the setting writes no record at all."""
    for setting in (True, False):
        assert host.create_only({"embassy": "ie", "vault": {"endpoint": endpoint, "create_only": setting}}) is setting
    for missing in ({"endpoint": endpoint}, {"endpoint": endpoint, "create_only": "yes"}):
        with pytest.raises(host.Failed, match="create_only"):
            host.create_only({"embassy": "ie", "vault": missing})
    with pytest.raises(host.Failed, match="writer"):
        host.writer_keys({"embassy": "ie", "vault": {"endpoint": endpoint, "writer": "anyone"}})


def test_the_timer_runs_the_stack_schedule_and_the_scratch_cluster_is_apart() -> None:
    timer = dataplane.timer("t", "embassy-restore-test.service", calendar=DEP.restore_tests.schedule)
    assert "OnCalendar=weekly" in timer and "Persistent=true" in timer
    conf = host.scratch_conf(Postgres(17).home(host.SCRATCH_NAME))
    assert f"port = {host.PORT}" in conf and host.PORT not in (5432, 5433)
    assert "archive_mode = off" in conf and "listen_addresses = ''" in conf
    assert host.FILES_DIR != "/srv/embassy-restore" and host.SCRATCH_NAME == "embassy-restore-test"
    assert "hba_file = '/var/lib/postgresql/17/embassy-restore-test/pg_hba.conf'" in conf
    assert "restoretest.py" in dataplane.host_module_files()
