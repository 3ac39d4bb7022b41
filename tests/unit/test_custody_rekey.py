"""The re-key of `custody rotate`, without hosts: key generations on the controller, their names and paths,
the configs rendered for them, the bundle's history, which generation a restore uses, and a re-key that
stops half-way and resumes."""

from __future__ import annotations

import datetime as dt
import fnmatch
from pathlib import Path
from typing import Any

import pytest

from embassy import model
from embassy.custody import hostsecrets, kit, rekey
from embassy.custody.bundle import gather
from embassy.drill.restore import choose_manifest
from embassy.errors import RestoreFailed, UserError
from embassy.home import context
from embassy.replication import dataplane, manifest, secrets, verify
from embassy.replication.manifest import Verified
from embassy.vaultaccess import CredentialSource, VaultAccess

from .custody_fixtures import NOW, MemoryVaults, controller, issue, lab_target
from .test_home_deploy import _data


@pytest.fixture(scope="module")
def dep() -> model.Deployment:
    return model.load_stack("rehearsal")


def test_generation_one_keeps_todays_names_and_later_ones_get_their_own() -> None:
    assert (secrets.pgbackrest_secret("ie"), secrets.restic_secret("ie")) == ("pgbackrest-ie.pass", "restic-ie.pass")
    assert (secrets.pgbackrest_secret("ie", 3), secrets.restic_secret("ie", 3)) == ("pgbackrest-ie.g3.pass",
                                                                                    "restic-ie.g3.pass")
    assert [dataplane.pgbackrest_path(g) for g in (1, 2, 12)] == ["/pgbackrest", "/pgbackrest-g2", "/pgbackrest-g12"]
    assert [dataplane.restic_base(g) for g in (1, 2)] == ["restic", "restic-g2"]
    # The drill withdraws every generation's restore secret: the globs match them all, and nothing else.
    names = [secrets.pgbackrest_secret("de", g) for g in (1, 2, 3)] + [secrets.restic_secret("de", g) for g in (1, 2)]
    assert all(any(fnmatch.fnmatch(n, p) for p in hostsecrets.RESTORE_SECRET_GLOBS) for n in names)
    assert not any(fnmatch.fnmatch(n, p) for p in hostsecrets.RESTORE_SECRET_GLOBS
                   for n in ("generation-de", "replication.pass", rekey.PENDING))


@pytest.mark.parametrize(("path", "generation"), [
    (None, 1), ("/pgbackrest", 1), ("/pgbackrest-g2", 2), ("restic/court-files", 1), ("restic-g7/court-files", 7),
    ("/restic-g3", 3)])
def test_the_generation_a_repository_names(path: str | None, generation: int) -> None:
    assert dataplane.generation_of(path) == generation


def test_a_repository_of_another_naming_is_refused() -> None:
    with pytest.raises(ValueError, match="not a repository"):
        dataplane.generation_of("/var/lib/pgbackrest")


def test_a_manifest_names_one_generation_and_one_without_repositories_is_generation_one() -> None:
    old = {"round": 4, "registers": [{"kind": "postgres", "name": "population"}, {"kind": "files", "name": "court-files"}]}
    assert dataplane.manifest_generation(old) == 1
    new = {"round": 9, "registers": [{"kind": "postgres", "repo_path": "/pgbackrest-g2"},
                                     {"kind": "files", "repository": "restic-g2/court-files"}]}
    assert dataplane.manifest_generation(new) == 2
    mixed = {"round": 9, "registers": [{"kind": "postgres", "repo_path": "/pgbackrest-g2"},
                                       {"kind": "files", "repository": "restic/court-files"}]}
    with pytest.raises(ValueError, match=r"key generations \[1, 2\]"):
        dataplane.manifest_generation(mixed)


def test_generations_are_recorded_in_order_and_a_damaged_record_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    folder.mkdir()
    assert secrets.generations(folder, "ie") == [(1, None)] and secrets.generation(folder, "ie") == 1
    secrets.record_generation(folder, "ie", 2, "2026-12-03T05:00:00+00:00")
    assert secrets.generation(folder, "ie") == 2 and secrets.generation(folder, "de") == 1
    with pytest.raises(UserError, match="is at key generation 2, not 3"):
        secrets.record_generation(folder, "ie", 4, "2026-12-03T06:00:00+00:00")
    (folder / "generation-de").write_text("3 2026-12-03T05:00:00+00:00\n")
    with pytest.raises(UserError, match="generation-de: line '3 2026") as err:
        secrets.generation(folder, "de")
    assert "HINT" in err.value.render()


def test_the_deploys_render_the_current_generation(tmp_path: Path) -> None:
    data = _data(tmp_path)
    folder = Path(data.secrets_dir)
    before = {r.vault.embassy: r for r in context.home_repos(data)}
    old_restic = context.restic_password(data, "se")
    secrets.record_generation(folder, "se", 2, NOW.isoformat())
    after = {r.vault.embassy: r for r in context.home_repos(data)}
    assert after["se"].path == "/pgbackrest-g2" and after["se"].cipher_pass != before["se"].cipher_pass
    assert after["de"] == before["de"]  # the other embassies keep theirs
    assert (folder / "pgbackrest-se.g2.pass").read_text().strip() == after["se"].cipher_pass
    conf = dataplane.pgbackrest_conf(list(after.values()), archive_async=True, pg_data="/var/lib/postgresql/17/main")
    assert "repo1-path=/pgbackrest\n" in conf and "repo2-path=/pgbackrest-g2\n" in conf and "repo3-path=/pgbackrest\n" in conf
    own = context.embassy_repo(data)  # the embassy host (se) reads its current generation only
    assert (own.path, own.cipher_pass) == ("/pgbackrest-g2", after["se"].cipher_pass)
    assert context.restic_password(data, "se") != old_restic
    env = dataplane.restic_env(own.vault, context.generation(data, "se"))
    assert "RESTIC_BASE=s3:https://vault-se.lab.internal:8443/rehearsal-se-vault/restic-g2\n" in env
    assert dataplane.restic_repository(own.vault, "court-files", 2).endswith("/rehearsal-se-vault/restic-g2/court-files")


def test_the_bundle_holds_every_generations_secrets_with_path_and_time(dep: model.Deployment, tmp_path: Path) -> None:
    lab, folder, _ = controller(tmp_path, dep)
    rekey.begin(dep, folder, NOW)
    # What the re-key writes is the owner's alone: new secrets, generation records, the pending record.
    made = [p for p in folder.iterdir() if ".g2." in p.name or p.name.startswith("generation-") or p.name == rekey.PENDING]
    assert len(made) == 6 + 3 + 1 and all(p.stat().st_mode & 0o077 == 0 for p in made), made
    bundles = gather(dep, lab_target(dep, lab), folder, 2, NOW)
    ie = bundles["ie"]
    assert [(p.repo_path, p.since) for p in ie.pgbackrest][1] == ("/pgbackrest-g2", NOW.isoformat())
    assert [p.repo_path for p in ie.restic] == ["/restic", "/restic-g2"]
    assert [p.value for p in ie.pgbackrest] == [(folder / n).read_text().strip()
                                                for n in ("pgbackrest-ie.pass", "pgbackrest-ie.g2.pass")]
    assert len({p.value for p in ie.pgbackrest + ie.restic}) == 4  # new backups, new passphrases
    assert hostsecrets.bundle_generation(ie) == 2
    old, new = hostsecrets.bundle_keys(ie, 1), hostsecrets.bundle_keys(ie, 2)
    assert (old.pgbackrest, old.restic) == (ie.pgbackrest[0].value, ie.restic[0].value)
    assert (new.pgbackrest, new.restic) == (ie.pgbackrest[1].value, ie.restic[1].value)
    with pytest.raises(RestoreFailed, match=r"holds no pgBackRest passphrase for /pgbackrest-g3 \(key generation 3"):
        hostsecrets.bundle_keys(ie, 3)


def test_a_rotated_kit_opens_to_both_generations(dep: model.Deployment, tmp_path: Path) -> None:
    lab, folder, _ = controller(tmp_path, dep)
    store = MemoryVaults()
    issue(dep, lab, store, folder, tmp_path / "v1")
    rekey.begin(dep, folder, NOW)
    issue(dep, lab, store, folder, tmp_path / "v2", rotate=True)
    texts = kit.read_shares([str(tmp_path / "v2" / f"official-{i}.txt") for i in (1, 2, 3)], lambda: "")
    bundle = kit.open_bundle(dep, store, "de", texts)
    assert bundle.version == 2 and [p.repo_path for p in bundle.pgbackrest] == ["/pgbackrest", "/pgbackrest-g2"]


def _manifest(round_number: int, minute: int, generation: int) -> Verified:
    body = {"round": round_number, "time": f"2026-12-03T05:{minute:02d}:00.000000Z", "registers": [
        {"kind": "postgres", "name": "population", "repo_path": dataplane.pgbackrest_path(generation)},
        {"kind": "files", "name": "court-files", "repository": f"{dataplane.restic_base(generation)}/court-files"}]}
    return Verified(manifest.object_key(round_number), body, "0" * 64)


def test_a_point_in_time_before_the_rotation_restores_from_the_older_generation() -> None:
    chain = [_manifest(1, 0, 1), _manifest(2, 10, 1), _manifest(3, 20, 2), _manifest(4, 30, 2)]
    at = dt.datetime(2026, 12, 3, 5, 15, tzinfo=dt.UTC)  # after round 2 (the one that closed generation 1)
    assert dataplane.manifest_generation(choose_manifest(chain, at).body) == 1
    assert dataplane.manifest_generation(choose_manifest(chain, None).body) == 2
    assert dataplane.manifest_generation(choose_manifest(chain, at + dt.timedelta(minutes=10)).body) == 2


def test_verify_names_a_host_reading_another_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    def fake(stdout: str) -> Any:
        return lambda *_a, **_k: subprocess.CompletedProcess([], 0, stdout, "")

    head = _manifest(4, 30, 2)
    monkeypatch.setattr(verify, "ssh", fake("/pgbackrest-g2\nrestic-g2\n"))
    ok = verify.Result("ie")
    verify.check_generation(None, "ie", head, ok)  # type: ignore[arg-type]
    assert ok.intact
    monkeypatch.setattr(verify, "ssh", fake("/pgbackrest\nrestic\n"))
    stale = verify.Result("ie")
    verify.check_generation(None, "ie", head, stale)  # type: ignore[arg-type]
    assert stale.first_failure == {"object": "host:ie/key-generation", "reason": (
        "the host reads the repositories /pgbackrest restic, manifests/0000000004.json names key generation 2: run "
        "`embassy deploy` (or restore with --shares)")}


class _Target:
    """Stands in for the lab target: the rounds and the deploy are replaced in these tests."""

    kind = "lab"


def _round(generation: int, *, errors: tuple[str, ...] = (), manifest_ok: bool = True) -> dict[str, Any]:
    regs = _manifest(7, 0, generation).body["registers"]
    return {"round": 7, "embassies": [
        {"name": name, "manifest": {"key": "m"} if manifest_ok or name != "ie" else None, "notes": [],
         "errors": list(errors) if name == "se" else [], "registers": regs} for name in ("de", "se", "ie")]}


def test_a_rekey_that_cannot_close_the_generation_changes_nothing(dep: model.Deployment, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _, folder, _ = controller(tmp_path, dep)
    monkeypatch.setattr(rekey.replicate, "run_round", lambda _target: _round(1, errors=("vault unreachable",)))
    with pytest.raises(UserError) as err:
        rekey.rekey(dep, _Target(), folder, tmp_path, say=lambda _m: None, deploy=lambda: None)
    assert "se: vault unreachable" in err.value.message and err.value.hint.startswith("nothing was changed")
    assert secrets.generation(folder, "se") == 1 and rekey.pending(folder) is None
    assert not list(folder.glob("*.g2.pass"))


def test_a_rekey_stopped_at_the_deploy_resumes_without_rekeying_again(dep: model.Deployment, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _, folder, _ = controller(tmp_path, dep)
    rounds = iter([_round(1), _round(2)])
    monkeypatch.setattr(rekey.replicate, "run_round", lambda _target: next(rounds))

    def broken() -> None:
        raise UserError("deploy failed on home at 'pgBackRest: stanza'", "fix it")

    said: list[str] = []
    with pytest.raises(UserError) as err:
        rekey.rekey(dep, _Target(), folder, tmp_path, say=said.append, deploy=broken)
    assert "stopped at the deploy: deploy failed on home" in err.value.message
    assert "run `embassy custody rotate` again (it resumes this re-key" in err.value.hint
    assert rekey.pending(folder) == {"de": 2, "se": 2, "ie": 2} and secrets.generation(folder, "ie") == 2
    passphrase = (folder / "pgbackrest-ie.g2.pass").read_text()
    got = rekey.rekey(dep, _Target(), folder, tmp_path, say=said.append, deploy=lambda: None)
    assert got == {"de": 2, "se": 2, "ie": 2} and secrets.generation(folder, "ie") == 2  # not 3
    assert (folder / "pgbackrest-ie.g2.pass").read_text() == passphrase
    assert any(m.startswith("resuming the pending re-key") for m in said)
    rekey.finish(folder)
    assert rekey.pending(folder) is None


def test_a_round_after_the_switch_must_name_the_new_generation() -> None:
    assert rekey.round_problems(_round(2), {"de": 2, "se": 2, "ie": 2}) == []
    assert rekey.round_problems(_round(1), {"de": 2, "se": 2, "ie": 2})[0] == \
        "de: round 7 names key generation 1, not 2"
    assert rekey.round_problems(_round(2, manifest_ok=False)) == ["ie: no manifest"]


def test_pending_record_that_is_not_json_is_named(tmp_path: Path) -> None:
    (tmp_path / rekey.PENDING).write_text("{")
    with pytest.raises(UserError, match=rf"{rekey.PENDING} is not JSON"):
        rekey.pending(tmp_path)


def _reader(lab: Any, embassy: str) -> VaultAccess:
    """The embassy's vault as a target hands it out: the lab's records, the read-only identity's file."""
    v = lab.vault(embassy)
    return VaultAccess(embassy=embassy, endpoint=v.endpoint, bucket=v.bucket, ca_file=v.ca_file,
                       identities={"reader": CredentialSource(file=v.reader_credentials)})


def test_a_plain_restore_takes_each_generations_secrets_from_the_controller(dep: model.Deployment, tmp_path: Path) -> None:
    lab, folder, _ = controller(tmp_path, dep)
    old = hostsecrets.controller_keys(dep, _reader(lab, "ie"), "ie", folder, 1)
    assert old.pgbackrest == (folder / "pgbackrest-ie.pass").read_text().strip()
    with pytest.raises(RestoreFailed, match=r"no restore secret .*pgbackrest-ie\.g2\.pass \(key generation 2 of ie\)"):
        hostsecrets.controller_keys(dep, _reader(lab, "ie"), "ie", folder, 2)
    rekey.begin(dep, folder, NOW)
    new = hostsecrets.controller_keys(dep, _reader(lab, "ie"), "ie", folder, 2)
    assert new.restic == (folder / "restic-ie.g2.pass").read_text().strip() != old.restic
    assert new.vault.access_key.startswith("LABREADER")  # the read-only identity, as the embassy host uses


def test_generation_one_took_over_no_later_than_the_switch(dep: model.Deployment, tmp_path: Path) -> None:
    """A secret file put back from a copy (the drill's withdrawal, a restore of the folder) is newer than the switch."""
    lab, folder, _ = controller(tmp_path, dep)
    switch = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    rekey.begin(dep, folder, switch)
    ie = gather(dep, lab_target(dep, lab), folder, 2, NOW)["ie"]
    assert [p.since for p in ie.pgbackrest] == [switch.isoformat(), switch.isoformat()]


def test_the_deploys_facts_read_the_generation_about_to_be_configured() -> None:
    """Facts are read before the new config is written: a re-key's new repos must look empty to them."""
    from embassy.replication import facts

    pg = facts.PgBackRestRepos().command(paths=("/pgbackrest-g2", "/pgbackrest"))
    assert "--stanza=home --repo1-path=/pgbackrest-g2 --repo2-path=/pgbackrest --output=json info" in pg
    assert facts.ResticSnapshots().command("ie", "court-files", "restic-g2").startswith(
        "EMBASSY_RESTIC_FOLDER=restic-g2 embassy-restic ie court-files ")
    wrapper = dataplane.script("embassy-restic")
    assert 'RESTIC_BASE="${RESTIC_BASE%/*}/$folder"' in wrapper and wrapper.index('folder="') < wrapper.index(". /etc")
