"""Drill reports: the model's verdict, report.json/.md/.html from one model, and their signature."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from embassy import model
from embassy.cli import app
from embassy.drill import signing
from embassy.drill.publish import write_report
from embassy.drill.report import Report, check_report, controller_tool_versions, plan_hash, verify_report
from embassy.errors import KeyInvalid, ObjectiveMissed, ReportInvalid, ReportMissing

ROOT = Path(__file__).resolve().parents[2]
INCIDENT = datetime(2026, 12, 2, 17, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return INCIDENT + timedelta(seconds=seconds)


def sample_fields(*, embassy: str = "de", slow: str | None = None, failure: dict[str, Any] | None = None) -> dict[str, Any]:
    """A drill of the rehearsal stack at one embassy, with its registers' objectives from the stack config.

    `slow` names a register restored after its RTO objective; `failure` is a failure the drill named.
    """
    dep = model.load_stack("rehearsal", ROOT)
    emb = next(e for e in dep.embassies if e.name == embassy)
    registers: list[dict[str, Any]] = []
    for i, reg in enumerate(sorted(dep.registers, key=lambda r: r.priority)):
        rto = reg.rto_seconds + 5 if reg.name == slow else 4.0 + 2.5 * i
        # A cold vault receives whole WAL segments only: its RPO objective is at least the archive timeout.
        rpo_objective = reg.rpo_seconds if emb.mode is model.Mode.WARM else max(reg.rpo_seconds, 60)
        registers.append({"name": reg.name, "kind": reg.kind.value, "priority": reg.priority, "verified": True,
                          "restored": True, "rto_seconds": rto, "rpo_seconds": 0.4,
                          "objective": {"rto_seconds": reg.rto_seconds, "rpo_seconds": rpo_objective},
                          "lost_transactions": 0, "digest": f"sha256:{i:064x}", "manifest_digest": f"sha256:{i:064x}",
                          "proof": {"signed_round": 42, "signed_point": "0/5B002E20" if reg.kind.value == "postgres"
                                    else "snapshot 6117eaa6",
                                    "beyond_signed": {"transactions": 17 if reg.kind.value == "postgres" else 0,
                                                      "source": "streamed from home over the authenticated replication "
                                                                "channel" if reg.kind.value == "postgres" else None}},
                          "rpo_method": "home's last committed transaction at the incident minus the newest one the "
                                        "restored register holds" if reg.kind.value == "postgres" else
                                        "the incident minus the start of the restored snapshot"})
    # The steps of a real drill (`make rehearsal`): 11 minutes of setup, then seconds of recovery.
    steps = [("plan: the desired state this drill rehearses (Pulumi program under mocks)", -640, -620),
             ("lab up (reused when already up)", -620, -609), ("harden every host (roles/site.yml), Lynis before and after",
                                                              -609, -285),
             ("deploy: home state, replication agents, embassy hosts", -285, -32),
             ("custody: seal each embassy's restore secrets in its vault, 3 officials' sheets, then withdraw every "
              "restore secret from the controller and de's host", -32, -21),
             ("write load on home (10 tx/s) and replication rounds under it", -21, -0.1),
             ("incident: home stopped, its connections closed, its network cut, its disk wiped", -0.1, 1.2),
             ("custody: open bundle version 1 from 2 of 3 sheets; its secrets to de's host", 1.2, 2.0),
             ("restore: verify the vault of de: manifest chain, signatures, freshness, backups", 2.0, 2.5),
             *((f"restore: {r['name']}: digest of the promoted standby against the manifest", 2.5 + 2.5 * i,
                2.5 + 2.5 * (i + 1)) for i, r in enumerate(registers)),
             ("restore: smoke-check the state service", 2.5 + 2.5 * len(registers), 4 + 2.5 * len(registers))]
    rto_total = max(4 + 2.5 * len(registers), *(r["rto_seconds"] for r in registers))
    return {
        "stack": dep.stack, "embassy": emb.name, "mode": emb.mode.value, "incident_at": INCIDENT,
        "started_at": at(-640), "finished_at": at(rto_total + 1), "rto_seconds": rto_total, "rpo_seconds": 0.4,
        "registers": registers,
        "timeline": [{"step": s, "start": at(a), "end": at(b)} for s, a, b in steps],
        "plan_hash": plan_hash({"stack": dep.stack, "resources": []}),
        "tool_versions": {**controller_tool_versions(), "postgresql": "15.10", "pgbackrest": "2.54.2", "restic": "0.16.4"},
        "manifest": {"key": f"manifests/{dep.stack}/000042.json", "sha256": "ab" * 32, "round": 42,
                     "chain_head": {"round": 42, "sha256": "ab" * 32}, "signature_ok": True,
                     "public_key_fingerprint": "sha256:" + "cd" * 32},
        "hardening": {"home": 90, f"enclave-{emb.name}": 85},
        "verifications": [{"object": "manifests 1..42: signatures and links", "ok": True, "detail": "42 manifests"},
                          {"object": "pgbackrest verify (repo of de)", "ok": True, "detail": "no error"}],
        "failures": [failure] if failure else [],
        "watch": {"method": "nftables counters in the kernel on the lab bridge", "dropped": 0, "frames_toward_home": 0,
                  "since": at(-0.1), "cut_at": at(0.4), "until": at(rto_total + 1), "frames_before_cut": 12,
                  "sources": {}, "frames_on_bridge": 2210, "closing": "3 connections closed in 0.2 s"},
        "where": {"target": "lab", "description": "the lab (id 5) on one machine", "data_size_mb": 8.0,
                  "data": "synthetic", "custody": "2 of 3 officials' sheets; the officials were simulated by the drill",
                  "officials_simulated": True},
    }


def passed_report() -> Report:
    return Report.build(**sample_fields())


def failed_report() -> Report:
    """A drill at the cold embassy whose vault held a damaged WAL segment, and that missed an RTO."""
    damaged = {"object": "vault-ie: pgbackrest/archive/main/15-1/0000000100000000/000000010000000000000007",
               "reason": "checksum of the segment differs from its manifest", "code": 204, "error": "DigestMismatch"}
    return Report.build(**sample_fields(embassy="ie", slow="land-register", failure=damaged))


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    return tmp_path / "keys"


def public_key(keys: Path) -> Any:
    return signing.load_public_key(keys / signing.PUBLIC_KEY_FILE)


# --------------------------------------------------------------------------- the model and its verdict


def test_a_passed_report_has_the_design_shape_and_the_evidence(tmp_path: Path, keys: Path) -> None:
    report = passed_report()
    assert report.passed and report.failures == []
    folder = write_report(report, tmp_path / "r", keys)
    data = json.loads((folder / "report.json").read_text())
    # DESIGN.md's fixed shape ...
    assert {"passed", "embassy", "rto_seconds", "rpo_seconds", "registers", "timeline"} <= set(data)
    assert data["passed"] is True and data["embassy"] == "de" and data["rto_seconds"] == 11.5
    for reg in data["registers"]:
        assert {"name", "kind", "verified", "restored", "rpo_seconds", "rto_seconds"} <= set(reg)
    assert [r["name"] for r in data["registers"]] == ["population", "land-register", "court-files"]  # priority order
    assert data["registers"][0]["objective"] == {"rto_seconds": 300, "rpo_seconds": 5}
    assert all(set(step) >= {"step", "start", "end"} for step in data["timeline"])
    assert data["timeline"][8] == {"step": "restore: verify the vault of de: manifest chain, signatures, freshness, "
                                           "backups", "start": "2026-12-02T17:00:02Z", "end": "2026-12-02T17:00:02.500000Z",
                                   "ok": True}
    # ... plus the evidence.
    assert data["stack"] == "rehearsal" and data["mode"] == "warm" and data["incident_at"] == "2026-12-02T17:00:00Z"
    assert data["plan_hash"].startswith("sha256:") and data["tool_versions"]["pgbackrest"] == "2.54.2"
    assert data["tool_versions"]["cryptography"]  # the controller's own, from the installed packages
    assert data["manifest"]["chain_head"] == {"round": 42, "sha256": "ab" * 32}
    assert data["hardening"] == {"home": 90, "enclave-de": 85}
    assert [v["ok"] for v in data["verifications"]] == [True, True]
    assert data["signer"]["fingerprint"] == signing.fingerprint(public_key(keys))
    assert Report.model_validate(data) == report.model_copy(update={"signer": report.model_validate(data).signer})
    assert verify_report(folder, public_key(keys)) and verify_report(folder, keys / signing.PUBLIC_KEY_FILE)


def test_a_failed_report_names_each_failure(tmp_path: Path, keys: Path) -> None:
    report = failed_report()
    assert not report.passed and report.mode == "cold"
    assert [(f.object, f.code, f.error) for f in report.failures] == [
        ("vault-ie: pgbackrest/archive/main/15-1/0000000100000000/000000010000000000000007", 204, "DigestMismatch"),
        ("register land-register", ObjectiveMissed.error_code, "ObjectiveMissed")]
    assert report.failures[1].reason == "RTO 605 s exceeds the objective 600 s"
    folder = write_report(report, tmp_path / "r", keys)
    md = (folder / "report.md").read_text()
    assert md.startswith("# Drill FAILED: stack rehearsal rebooted at embassy ie (cold)")
    assert "| vault-ie: pgbackrest/archive/main/15-1/0000000100000000/000000010000000000000007 | checksum of the segment" in md
    assert "| land-register | postgres | yes | yes | 600.0 s | 605.0 s (missed) |" in md
    html = (folder / "report.html").read_text()
    assert '<header id="verdict" class="verdict failed">' in html and "<h1>Drill FAILED</h1>" in html
    assert html.index('id="verdict"') < html.index('id="failures"') < html.index('id="timeline"')  # the verdict first
    assert "[204] DigestMismatch" in html and "RTO 605 s exceeds the objective 600 s" in html
    assert json.loads((folder / "report.json").read_text())["passed"] is False
    assert verify_report(folder, public_key(keys))  # a failed drill's report is as trustworthy as a passed one's


def test_each_shortfall_of_a_register_fails_the_drill() -> None:
    """The verdict's own fault table: each way a register or a check falls short turns the drill red."""
    faults: dict[str, Any] = {
        "not verified": lambda f: f["registers"][0].update(verified=False),
        "not restored": lambda f: f["registers"][1].update(restored=False, rto_seconds=None),
        "RTO missed": lambda f: f["registers"][2].update(rto_seconds=901.0),
        "RPO missed": lambda f: f["registers"][0].update(rpo_seconds=5.5),
        "RPO not measured": lambda f: f["registers"][0].update(rpo_seconds=None),
        "a check failed": lambda f: f["verifications"].append({"object": "restic check (court-files)", "ok": False}),
        "a named failure": lambda f: f["failures"].append({"object": "vault-de", "reason": "unreachable", "code": 300}),
        "no register at all": lambda f: f.update(registers=[]),
    }
    for name, fault in faults.items():
        fields = sample_fields()
        fault(fields)
        report = Report.build(**fields)
        assert not report.passed, name
        assert report.failures or not report.registers, f"{name}: the failure is named"
    assert Report.build(**sample_fields()).passed


def test_a_failure_is_named_by_its_registry_code() -> None:
    fields = sample_fields(failure={"object": "vault-de", "reason": "no answer within 5 s", "code": 300})
    assert Report.build(**fields).failures[0].error == "VaultUnreachable"
    for code, error in ((300, "DigestMismatch"), (999, None)):
        with pytest.raises(ReportInvalid, match="error code"):
            Report.build(**sample_fields(failure={"object": "x", "reason": "y", "code": code, "error": error}))


def test_the_verdict_cannot_be_set_against_the_evidence() -> None:
    fields = sample_fields(slow="population")
    with pytest.raises(ValidationError, match="contradicts"):
        Report.model_validate({**fields, "passed": True})
    with pytest.raises(ReportInvalid) as caught:
        Report.build(**{**sample_fields(), "mode": "lukewarm"})
    assert caught.value.render().startswith("error: [109]: report fields are invalid")


# --------------------------------------------------------------------------- the page itself


def test_the_html_page_is_self_contained_with_an_inline_chart(tmp_path: Path, keys: Path) -> None:
    html = (write_report(passed_report(), tmp_path / "r", keys) / "report.html").read_text()
    for external in ("<link", "<script", "src=", "@import", "<iframe", "<img", "<object", "<embed"):
        assert external not in html, external
    assert "url(" in html and not re.findall(r"url\((?!#)", html)  # the SVG's clip paths point inside the page only
    # The only URLs are the SVG namespace names (identifiers, never fetched).
    assert set(re.findall(r"https?://[^\s\"'<>)]+", html)) == {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
    figure = html[html.index('<figure id="timeline-chart"'):]
    figure = figure[:figure.index("</figure>")]
    assert "<svg" in figure and "</svg>" in figure and "<!DOCTYPE svg" not in html
    for label in ("lab up", "restore at de: 5 steps", "incident", "seconds since the incident"):
        assert label in figure, label
    recovery = html[html.index('<figure id="recovery-chart"'):]
    recovery = recovery[:recovery.index("</figure>")]
    for label in ("restore: verify the vault of de", "restore: court-files: digest", "smoke-check the state service",
                  "incident: home lost", "service answering: RTO 11.5 s"):
        assert label in recovery, label
    assert "lab up" not in recovery  # the setup is not on the recovery's scale
    for register in ("population", "land-register", "court-files"):
        table = html[html.index(f'id="register-{register}"'):]
        table = table[:table.index("</table>")]
        assert "<th>RTO</th>" in table and "<th>RPO</th>" in table and "verified" in table and "restored" in table


def test_rendering_is_reproducible(tmp_path: Path, keys: Path) -> None:
    a = write_report(passed_report(), tmp_path / "a", keys)
    b = write_report(passed_report(), tmp_path / "b", keys)
    for name in ("report.json", "report.md", "report.html"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


# --------------------------------------------------------------------------- signature


def test_the_signing_key_is_made_once_private_and_refused_when_exposed(keys: Path) -> None:
    key = signing.signing_key(keys)
    assert keys.stat().st_mode & 0o777 == 0o700
    assert (keys / signing.PRIVATE_KEY_FILE).stat().st_mode & 0o777 == 0o600
    again = signing.signing_key(keys)
    assert signing.fingerprint(again.public_key()) == signing.fingerprint(key.public_key())
    assert signing.fingerprint(public_key(keys)) == signing.fingerprint(key.public_key())
    os.chmod(keys / signing.PRIVATE_KEY_FILE, 0o644)
    with pytest.raises(KeyInvalid, match="readable by others"):
        signing.signing_key(keys)


EDITS: dict[str, Any] = {
    # name: (file, edit of its text, the object the check names)
    "a value of report.json": ("report.json", lambda t: t.replace('"passed": false', '"passed": true'), "report.json"),
    "a measured RTO": ("report.json", lambda t: t.replace('"rto_seconds": 605.0', '"rto_seconds": 595.0'), "report.json"),
    "a duplicate key that some readers take": ("report.json", lambda t: t.replace('{\n  "format": 1,',
                                                                                   '{\n  "passed": true,\n  "format": 1,', 1),
                                               "report.json"),
    "report.json no longer JSON": ("report.json", lambda t: t[:-10], "report.json"),
    "the verdict of report.html": ("report.html", lambda t: t.replace("Drill FAILED", "Drill passed"), "report.html"),
    "a row of report.md": ("report.md", lambda t: t.replace("(missed)", ""), "report.md"),
    "a digest in report.sig": ("report.sig", lambda t: re.sub(r'"report.md": "[0-9a-f]{4}', '"report.md": "0000', t),
                               "report.sig"),
    "the signature": ("report.sig", lambda t: re.sub(r'"signature": "...', '"signature": "AAA', t), "report.sig"),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_any_edit_breaks_the_verification_and_is_named(edit: str, tmp_path: Path, keys: Path) -> None:
    folder = write_report(failed_report(), tmp_path / "r", keys)
    name, change, named = EDITS[edit]
    before = (folder / name).read_text()
    after = change(before)
    assert after != before, f"{edit}: the edit applies to this report"
    (folder / name).write_text(after)
    check = check_report(folder, public_key(keys))
    assert not check.intact and not verify_report(folder, public_key(keys))
    assert [f.object for f in check.failures] == [named]
    result = CliRunner().invoke(app, ["report", "verify", str(folder), "--public-key", str(keys / signing.PUBLIC_KEY_FILE)])
    assert result.exit_code == 1, result.output
    assert f"{folder / named}:" in result.output and "HINT:" in result.output


def test_reindenting_report_json_is_not_an_edit(tmp_path: Path, keys: Path) -> None:
    folder = write_report(passed_report(), tmp_path / "r", keys)
    data = json.loads((folder / "report.json").read_text())
    (folder / "report.json").write_text(json.dumps(data, indent=None, sort_keys=True))
    assert verify_report(folder, public_key(keys))


def test_a_missing_signature_or_another_signer_is_not_intact(tmp_path: Path, keys: Path) -> None:
    folder = write_report(passed_report(), tmp_path / "r", keys)
    other = signing.signing_key(tmp_path / "other-keys").public_key()
    check = check_report(folder, other)
    assert not check.intact and "signed by another key" in check.failures[0].reason
    (folder / "report.sig").unlink()
    check = check_report(folder, public_key(keys))
    assert not check.intact and check.failures[0].object == "report.sig" and "not signed" in check.failures[0].reason


def test_report_verify_cli(tmp_path: Path, keys: Path) -> None:
    folder = write_report(passed_report(), tmp_path / "r", keys)
    pub = str(keys / signing.PUBLIC_KEY_FILE)
    ok = CliRunner().invoke(app, ["report", "verify", str(folder), "--public-key", pub, "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout) == {"folder": str(folder), "intact": True, "fingerprint": signing.fingerprint(public_key(keys)),
                                     "failures": []}
    # Bad input: exit 2, each naming what is wrong.
    no_folder = CliRunner().invoke(app, ["report", "verify", str(tmp_path / "nowhere"), "--public-key", pub])
    assert no_folder.exit_code == 2 and "error: [108]:" in no_folder.output and "is not a folder" in no_folder.output
    (tmp_path / "empty").mkdir()
    empty = CliRunner().invoke(app, ["report", "verify", str(tmp_path / "empty"), "--public-key", pub])
    assert empty.exit_code == 2 and "has no report.json" in empty.output
    not_a_key = CliRunner().invoke(app, ["report", "verify", str(folder), "--public-key", str(folder / "report.md")])
    assert not_a_key.exit_code == 2 and "error: [107]:" in not_a_key.output and "not a PEM public key" in not_a_key.output
    private = CliRunner().invoke(app, ["report", "verify", str(folder), "--public-key", str(keys / signing.PRIVATE_KEY_FILE)])
    assert private.exit_code == 2 and "HINT:" in private.output
    missing = CliRunner().invoke(app, ["report", "verify", str(folder), "--public-key", str(tmp_path / "none.pub")])
    assert missing.exit_code == 2 and "cannot read public key" in missing.output
    with pytest.raises(ReportMissing):
        check_report(tmp_path / "nowhere", public_key(keys))


@pytest.mark.parametrize(("beyond", "said"), [
    ({"transactions": 12, "source": "streamed from home"}, "round 4, at 0/3000000; 12 transactions beyond it, "
                                                           "streamed from home (no signature covers them)"),
    ({"transactions": 0}, "round 4, at 0/3000000; nothing beyond it"),
    ({"transactions": None, "read": "70 archived segments lie beyond the signed point, more than 64"},
     "round 4, at 0/3000000; beyond it: not counted (70 archived segments lie beyond the signed point, more than 64)"),
])
def test_the_proof_says_what_lies_beyond_the_signed_point_and_why_it_was_not_counted(
        beyond: dict[str, Any], said: str) -> None:
    from embassy.drill.render import proof_text
    from embassy.drill.report import Proof, RegisterResult
    register = RegisterResult.model_construct(proof=Proof(signed_round=4, signed_point="0/3000000",
                                                          beyond_signed=beyond))
    assert proof_text(register) == said
