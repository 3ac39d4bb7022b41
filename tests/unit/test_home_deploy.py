"""The deploy plumbing without hosts: secrets, rendered configs, pyinfra results, CLI errors."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from embassy import deploy
from embassy.errors import UserError
from embassy.home import context
from embassy.replication import dataplane, secrets
from embassy.replication.pgmajor import Postgres

from .incli import embassy

ROOT = Path(__file__).resolve().parents[2]


def _data(tmp_path: Path, stack: str = "rehearsal") -> SimpleNamespace:
    vaults = []
    for name in ("de", "se", "ie"):
        creds = tmp_path / f"{name}.json"
        creds.write_text(json.dumps({"access_key_id": f"AK{name}", "secret_access_key": f"SK{name}"}))
        reader = tmp_path / f"{name}-reader.json"
        reader.write_text(json.dumps({"access_key_id": f"RK{name}", "secret_access_key": f"RS{name}"}))
        vaults.append({"embassy": name, "dns_name": f"vault-{name}.lab.internal", "endpoint": f"https://vault-{name}.lab.internal:8443",
                       "bucket": f"{stack}-{name}-vault", "ca_file": str(tmp_path / "ca.crt"), "agent_credentials": str(creds),
                       "reader_credentials": str(reader)})
    return SimpleNamespace(stack=stack, vaults=vaults, secrets_dir=str(tmp_path / "secrets"), embassy="se")


def test_secrets_are_created_once_private_and_distinct(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    a = secrets.secret(folder, "pgbackrest-de.pass")
    assert a == secrets.secret(folder, "pgbackrest-de.pass")
    assert a != secrets.secret(folder, "pgbackrest-se.pass") and len(a) >= 60
    assert folder.stat().st_mode & 0o777 == 0o700
    assert (folder / "pgbackrest-de.pass").stat().st_mode & 0o777 == 0o600
    os.chmod(folder / "pgbackrest-de.pass", 0o644)
    with pytest.raises(UserError, match="readable by others"):
        secrets.secret(folder, "pgbackrest-de.pass")


def test_home_gets_one_repo_per_embassy_each_with_its_passphrase(tmp_path: Path) -> None:
    data = _data(tmp_path)
    repos = context.home_repos(data)
    assert [(r.index, r.vault.embassy) for r in repos] == [(1, "de"), (2, "se"), (3, "ie")]
    assert len({r.cipher_pass for r in repos}) == 3
    conf = dataplane.pgbackrest_conf(repos, archive_async=True, pg_data=Postgres(17).data)
    assert "pg1-path=/var/lib/postgresql/17/main\n" in conf  # the cluster of the host's major, never a constant
    for r in repos:
        assert f"repo{r.index}-cipher-pass={r.cipher_pass}" in conf
        assert f"repo{r.index}-s3-endpoint=vault-{r.vault.embassy}.lab.internal" in conf
        assert f"repo{r.index}-storage-port=8443" in conf
    assert "archive-async=y" in conf and f"[{dataplane.STANZA}]" in conf


def test_an_embassy_gets_only_its_own_repo(tmp_path: Path) -> None:
    data = _data(tmp_path)
    home = {r.vault.embassy: r.cipher_pass for r in context.home_repos(data)}
    own = context.embassy_repo(data)
    conf = dataplane.pgbackrest_conf([own], archive_async=False, pg_data=Postgres(15).data)
    assert own.vault.embassy == "se" and own.cipher_pass == home["se"]
    assert home["de"] not in conf and home["ie"] not in conf
    assert "repo2" not in conf and "SKde" not in conf and "archive-async" not in conf
    # An embassy reads its vault with the read-only identity, never with the agent's (which can write).
    assert "RKse" in conf and "AKse" not in conf and "SKse" not in conf


def test_restic_and_standby_configs() -> None:
    vault = secrets.Vault("de", "vault-de.lab.internal", 8443, "b", "/ca", "AK", "SK")
    assert dataplane.restic_repository(vault, "court-files") == "s3:https://vault-de.lab.internal:8443/b/restic/court-files"
    env = dataplane.restic_env(vault)
    assert "RESTIC_PASSWORD_FILE=/etc/embassy/restic/de.pass" in env and "AWS_SECRET_ACCESS_KEY=SK" in env
    standby = dataplane.standby_conf("10.0.0.10", "de")
    assert "host=10.0.0.10" in standby and "application_name=de" in standby and "archive-get" in standby
    hba = dataplane.home_pg_hba(["10.0.0.20"])
    assert "host    replication     replicator      10.0.0.20/32" in hba
    assert "0.0.0.0" not in hba


def test_parse_pyinfra_results() -> None:
    payload = {"results": {"operations": [
        {"name": "a", "success": ["home"], "no_change": ["enclave-de"], "error": []},
        {"name": "b", "success": [], "no_change": ["home", "enclave-de"], "error": []},
        {"name": "c", "success": [], "no_change": [], "error": ["enclave-de"]},
    ], "failed_hosts": ["enclave-de"]}}
    result = deploy.parse_results(payload)
    assert [(h.name, h.changed, h.unchanged, h.errors) for h in result.hosts] == [
        ("enclave-de", 0, 2, ["c"]), ("home", 1, 1, [])]
    assert result.failed_hosts == ["enclave-de"]
    assert result.as_json()["hosts"][1] == {"name": "home", "changed": 1, "unchanged": 1, "errors": []}


def test_aws_without_pulumi_is_a_clear_error(tmp_path: Path) -> None:
    done = embassy("deploy", "--target", "aws", "--stack", "rehearsal", env={"PATH": str(tmp_path)})  # no pulumi
    assert done.returncode == 2
    assert "error: the pulumi CLI is not installed" in done.stderr and "HINT:" in done.stderr


def test_bad_input_is_refused(tmp_path: Path) -> None:
    bad_target = embassy("deploy", "--target", "moon", "--stack", "rehearsal")
    assert bad_target.returncode == 2
    bad_size = embassy("deploy", "--target", "lab", "--stack", "rehearsal", "--size-mb", "0")
    assert bad_size.returncode == 2 and "--size-mb" in bad_size.stderr and "HINT:" in bad_size.stderr
    no_lab = embassy("deploy", "--target", "lab", "--stack", "rehearsal",
                     env={"EMBASSY_LAB_ID": "97", "EMBASSY_LAB_ROOT": str(tmp_path)})
    assert no_lab.returncode == 2 and "lab 97 is not up" in no_lab.stderr


def test_seed_spec_from_host_data_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(context.SIZE_ENV, "12.5")
    assert context.spec(SimpleNamespace()).size_mb == 12.5
    assert context.spec(SimpleNamespace(home_size_mb=3, home_seed=9)) == context.Spec(9, 3.0)
    monkeypatch.setenv(context.SIZE_ENV, "lots")
    with pytest.raises(UserError, match="bad seed or size"):
        context.spec(SimpleNamespace())


def test_home_is_deployed_before_the_embassies_and_results_add_up() -> None:
    # Two pyinfra runs: the standbys start only once home's agent made the stanza in their vaults.
    assert deploy.PHASES == (("deploys/home_state.py", "deploys/agent.py"), ("deploys/standby.py",))
    first = deploy.DeployResult([deploy.HostResult("home", 80, 3), deploy.HostResult("enclave-de", 0, 0)], [])
    second = deploy.DeployResult([deploy.HostResult("home", 0, 0), deploy.HostResult("enclave-de", 20, 1, ["x"])],
                                 ["enclave-de"])
    merged = deploy.merge([first, second])
    assert [(h.name, h.changed, h.unchanged, h.errors) for h in merged.hosts] == [
        ("enclave-de", 20, 1, ["x"]), ("home", 80, 3, [])]
    assert merged.failed_hosts == ["enclave-de"]


def test_a_subset_of_the_deploys_keeps_home_before_the_embassies() -> None:
    # The re-key deploys only the agents, still in two runs: home's new stanzas before the embassies read them.
    assert deploy.phases_of(deploy.DEPLOYS) == deploy.PHASES
    assert deploy.phases_of(deploy.AGENTS) == (("deploys/agent.py",), ("deploys/standby.py",))
    assert deploy.phases_of(("deploys/standby.py", "deploys/agent.py")) == (("deploys/agent.py",), ("deploys/standby.py",))
    assert deploy.phases_of(("deploys/home_state.py",)) == (("deploys/home_state.py",),)
    assert deploy.phases_of(("x.py", "deploys/standby.py")) == (("deploys/standby.py",), ("x.py",))
    assert "deploys/home_state.py" not in deploy.AGENTS  # the home state holds no key: a re-key leaves it alone


class _FakeHost:
    """The pyinfra host an operation's generator sees: facts answered from a table, counted; noops recorded."""

    def __init__(self, answers: dict[str, object]) -> None:
        self.answers, self.asked, self.noops = answers, [], []  # type: ignore[var-annotated]

    def get_fact(self, cls: type, **kwargs: object) -> object:
        self.asked.append(cls.__name__)
        return self.answers[cls.__name__]

    def noop(self, text: str) -> None:
        self.noops.append(text)


def _commands(monkeypatch: pytest.MonkeyPatch, op: object, answers: dict[str, object],
              **kwargs: object) -> tuple[list[str], _FakeHost]:
    from embassy.replication import deploy_home

    fake = _FakeHost(answers)
    monkeypatch.setattr(deploy_home, "host", fake)
    return [str(c) for c in op.__wrapped__(**kwargs)], fake  # type: ignore[attr-defined]


def test_first_full_backups_ask_the_vaults_once_and_back_up_only_the_repos_without_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from embassy.replication import deploy_home

    repos = {1: {"status": 0, "backups": 2}, 2: {"status": 2, "backups": 0}, 3: {"status": 2, "backups": 0}}
    done, fake = _commands(monkeypatch, deploy_home.first_full_backups, {"PgBackRestRepos": repos}, repos=[1, 2, 3])
    assert fake.asked == ["PgBackRestRepos"]  # one `info` over every repo, not one per repo
    assert [c.split("pgbackrest ", 1)[1] for c in done] == ["--stanza=home --repo=2 --type=full backup'",
                                                           "--stanza=home --repo=3 --type=full backup'"]
    done, fake = _commands(monkeypatch, deploy_home.first_full_backups,
                           {"PgBackRestRepos": {n: {"status": 0, "backups": 1} for n in (1, 2, 3)}}, repos=[1, 2, 3])
    assert done == [] and fake.noops  # a second run changes nothing


def test_a_restic_repository_is_made_once_with_one_first_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    from embassy.replication import deploy_home

    args = {"embassy": "de", "register": "court-files", "path": "/srv/registers/court-files", "folder": "restic-g2"}
    for snapshots, wanted in ((None, ["init", "backup"]), ([], ["backup"]), ([{"id": "x"}], [])):
        done, fake = _commands(monkeypatch, deploy_home.restic_repository_with_snapshot,
                               {"ResticSnapshots": snapshots}, **args)
        assert fake.asked == ["ResticSnapshots"]
        assert [c.split()[3] for c in done] == wanted, (snapshots, done)
        assert all(c.startswith("embassy-restic de court-files ") for c in done)
