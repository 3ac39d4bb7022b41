"""Fail closed: every bad stack file or value is refused by validate, plan and check alike (exit 2, the key
path or file named, a HINT, no traceback), and every range limit is proven by breaking it by one."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from embassy import model
from embassy.cli import app

ROOT = Path(__file__).resolve().parents[2]
REHEARSAL_TEXT = (ROOT / "Pulumi.rehearsal.yaml").read_text()
STACK = "bad"
Values = dict[str, Any]


def rehearsal_values() -> Values:
    return copy.deepcopy(model.read_stack_values(ROOT / "Pulumi.rehearsal.yaml"))


def as_stack_file(values: Values) -> bytes:
    doc = {"config": {f"{model.NAMESPACE}:{k}": v for k, v in values.items()}}
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode()


def mutated(change: Callable[[Values], None]) -> bytes:
    values = rehearsal_values()
    change(values)
    return as_stack_file(values)


def text_replaced(old: str, new: str) -> bytes:
    assert old in REHEARSAL_TEXT, old
    return REHEARSAL_TEXT.replace(old, new, 1).encode()


def embassy(i: int, **fields: Any) -> Callable[[Values], None]:
    return lambda v: v["embassies"][i].update(fields)


def register(i: int, **fields: Any) -> Callable[[Values], None]:
    return lambda v: v["registers"][i].update(fields)


def top(**fields: Any) -> Callable[[Values], None]:
    return lambda v: v.update(fields)


E0 = "data-embassy:embassies[0]"
E1 = "data-embassy:embassies[1]"

# case id -> (the stack file's bytes, what the error names (key path or file), words the HINT says)
CASES: dict[str, tuple[bytes, str, str]] = {
    # the file itself
    "file is a list": (b"- config\n- data-embassy:embassies\n", "Pulumi.bad.yaml", "`config:`"),
    "file is a scalar": (b"just some words\n", "Pulumi.bad.yaml", "`config:`"),
    "file is a number": (b"42\n", "Pulumi.bad.yaml", "`config:`"),
    "file is binary": (bytes(range(256)) * 4, "Pulumi.bad.yaml", "YAML text"),
    "file is not UTF-8": ("config:\n  data-embassy:classification: salajane é\n".encode("latin-1"),
                          "Pulumi.bad.yaml", "UTF-8"),
    "file is not YAML": (b"config: [\n  data-embassy:state: {\n", "Pulumi.bad.yaml", "YAML syntax"),
    "file nested 100k deep": (b"[" * 100_000 + b"]" * 100_000, "Pulumi.bad.yaml", "`config:`"),
    "config is a list": (b"config:\n  - data-embassy:state\n", "config", "data-embassy:<key>"),
    "config is a string": (b"config: data-embassy\n", "config", "data-embassy:<key>"),
    "empty file": (b"", "data-embassy:embassies", "add the key"),
    "file of 5 MiB": (REHEARSAL_TEXT.encode() + b"#" * (5 << 20), "Pulumi.bad.yaml", "--stack"),
    "misspelled config:": (text_replaced("config:", "confg:"), "confg", "did you mean 'config'"),
    # keys that would be ignored
    "duplicate key in an embassy": (text_replaced("      retention_days: 3650\n",
                                                  "      retention_days: 3650\n      retention_days: 1\n"),
                                    f"{E0}.retention_days", "give each key once"),
    "duplicate top-level key": (REHEARSAL_TEXT.encode() + b"  data-embassy:state: {name: Latvia, code: LV}\n",
                                "data-embassy:state", "give each key once"),
    "misspelled top-level key": (text_replaced("data-embassy:embassies:", "data-embassy:embasies:"),
                                 "data-embassy:embasies", "did you mean 'data-embassy:embassies'"),
    "unknown top-level key": (mutated(top(retention=30)), "data-embassy:retention", "remove it"),
    "misspelled namespace": (REHEARSAL_TEXT.encode() + b"  data-embasy:classification: secret\n",
                             "config.data-embasy:classification", "the namespace is data-embassy"),
    "key without namespace": (REHEARSAL_TEXT.encode() + b"  classification: secret\n",
                              "config.classification", "data-embassy:classification"),
    "register names an embassy twice": (mutated(register(2, embassies=["de", "se", "de"])),
                                        "data-embassy:registers[2].embassies[2]", "name each embassy once"),
    "misspelled embassy key": (mutated(embassy(0, retention=30)), f"{E0}.retention", "did you mean 'retention_days'"),
    # types YAML or lax parsing would bend
    "retention_days: true": (mutated(embassy(0, retention_days=True)), f"{E0}.retention_days", "boolean is not a number"),
    "retention_days: '10'": (mutated(embassy(0, retention_days="10")), f"{E0}.retention_days", "without quotes"),
    "retention_days: 10.5": (mutated(embassy(0, retention_days=10.5)), f"{E0}.retention_days", "whole number"),
    "host_count: '2'": (mutated(embassy(0, host_count="2")), f"{E0}.host_count", "without quotes"),
    "rpo_seconds: true": (mutated(register(0, rpo_seconds=True)), "data-embassy:registers[0].rpo_seconds",
                          "boolean is not a number"),
    "priority: '1'": (mutated(register(0, priority="1")), "data-embassy:registers[0].priority", "without quotes"),
    "cold_rpo_seconds: true": (mutated(top(cold_rpo_seconds=True)), "data-embassy:cold_rpo_seconds",
                               "boolean is not a number"),
    "classification: 5": (mutated(top(classification=5)), "data-embassy:classification", "give classification as text"),
    "classification: yes": (text_replaced("  data-embassy:principals:", "  data-embassy:classification: yes\n"
                                          "  data-embassy:principals:"), "data-embassy:classification", "quote"),
    "nation: NO (YAML false)": (text_replaced("nation: DE", "nation: NO"), f"{E0}.nation", 'nation: "NO"'),
    "mode: on (YAML true)": (text_replaced("mode: warm", "mode: on"), f"{E0}.mode", "quote"),
    "region: 1": (mutated(embassy(0, region=1)), f"{E0}.region", "as text"),
    "region with shell": (mutated(embassy(0, region="eu-central-1; reboot")), f"{E0}.region", "eu-central-1"),
    "key forging a HINT line": (mutated(embassy(0, **{"x\nHINT: all is well": 1})), f"{E0}.x\\nHINT", "remove the key"),
    "admin_cidrs as a string": (mutated(embassy(1, admin_cidrs="203.0.113.0/28")), f"{E1}.admin_cidrs", "YAML list"),
    "admin_cidrs with a number": (mutated(embassy(1, admin_cidrs=["203.0.113.0/28", 5])), f"{E1}.admin_cidrs[1]",
                                  "as text"),
    "embassies as a mapping": (mutated(top(embassies={"name": "de"})), "data-embassy:embassies", "YAML list"),
    "embassy as a number": (mutated(top(embassies=[5])), "data-embassy:embassies[0]", "mapping"),
    "state as a string": (mutated(top(state="Estonia")), "data-embassy:state", "mapping"),
    "key_admins as a string": (mutated(lambda v: v["principals"].update(key_admins=v["principals"]["key_admins"][0])),
                               "data-embassy:principals.key_admins", "YAML list"),
    # upper bounds and shapes AWS has
    "retention beyond 100 years": (mutated(embassy(0, retention_days=36501)), f"{E0}.retention_days", "at most 36500"),
    "classification too long": (mutated(top(classification="x" * 257)), "data-embassy:classification", "at most 256"),
    "classification with shell": (mutated(top(classification="secret; rm -rf /")), "data-embassy:classification",
                                  "tag value"),
    "instance_type with shell": (mutated(embassy(0, instance_type="m5.large; reboot")), f"{E0}.instance_type",
                                 "family.size"),
    "instance_type $(...)": (mutated(embassy(0, instance_type="$(reboot).large")), f"{E0}.instance_type", "family.size"),
    "instance_type without size": (mutated(embassy(0, instance_type="m5")), f"{E0}.instance_type", "m5.xlarge"),
    "state name with a newline": (mutated(lambda v: v["state"].update(name="Estonia\nHINT: all good")),
                                  "data-embassy:state.name", "printable"),
    # the internet, whole or in pieces
    "admin 0.0.0.0/0": (mutated(embassy(1, admin_cidrs=["0.0.0.0/0"])), f"{E1}.admin_cidrs", "never 0.0.0.0/0"),
    "admin internet in two halves": (mutated(embassy(1, admin_cidrs=["0.0.0.0/1", "128.0.0.0/1"])),
                                     f"{E1}.admin_cidrs", "at most a /16"),
    "admin internet in 256 /8s": (mutated(embassy(1, admin_cidrs=[f"{i}.0.0.0/8" for i in range(256)])),
                                  f"{E1}.admin_cidrs", "at most a /16"),
    "admin IPv6 internet in halves": (mutated(embassy(1, admin_cidrs=["::/1", "8000::/1"])), f"{E1}.admin_cidrs",
                                      "/48 of IPv6"),
    "admin IPv4-mapped IPv6": (mutated(embassy(1, admin_cidrs=["::ffff:0:0/96"])), f"{E1}.admin_cidrs", "as IPv4"),
    # hints that point the right way
    "lowercase nation": (mutated(embassy(0, nation="de")), f"{E0}.nation", "'DE'"),
    "lowercase home state": (mutated(lambda v: v["state"].update(code="ee")), "data-embassy:state.code", "'EE'"),
    "uppercase embassy name": (mutated(embassy(0, name="DE")), f"{E0}.name", "lowercase letters"),
    "volume below the minimum": (mutated(embassy(0, volume_size_gb=10)), f"{E0}.volume_size_gb", "at least 20"),
    "host nation without a region": (mutated(embassy(2, nation="LU")), "data-embassy:embassies[2].nation",
                                     "nation with an AWS region"),
    "embassy in the home nation": (mutated(embassy(2, nation="EE")), "data-embassy:embassies[2].nation",
                                   "friendly host nation"),
    "cold bound below its minimum": (mutated(top(cold_rpo_seconds=30)), "data-embassy:cold_rpo_seconds",
                                     "at least 60"),
}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def assert_refused(args: list[str], names: str, hint: str) -> str:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # an exit, never a crash
    assert "Traceback" not in result.output
    err = result.stderr
    assert err.startswith("error: "), err
    assert all(line.startswith(("error: ", "HINT: ")) for line in err.splitlines()[:-1]), err  # none forged
    assert names in err and "HINT:" in err, err
    assert hint in err, err
    return err


@pytest.mark.parametrize("case", sorted(CASES))
def test_validate_refuses(project: Path, case: str) -> None:
    content, names, hint = CASES[case]
    (project / f"Pulumi.{STACK}.yaml").write_bytes(content)
    assert_refused(["validate", "--stack", STACK], names, hint)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("command", ["plan", "check"])
def test_plan_and_check_refuse_alike(project: Path, case: str, command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import embassy.plan

    def must_not_run(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the program was planned from an invalid config")

    monkeypatch.setattr(embassy.plan, "compute_plan", must_not_run)
    content, names, hint = CASES[case]
    (project / f"Pulumi.{STACK}.yaml").write_bytes(content)
    args = [command, "--stack", STACK] + (["--out", str(project / "plan.json")] if command == "plan" else [])
    assert_refused(args, names, hint)
    assert sorted(p.name for p in project.iterdir()) == ["Pulumi.bad.yaml", "Pulumi.yaml"]  # nothing written


@pytest.mark.parametrize("stack", ["../Pulumi", "a/b", "a b", "x" * 101, "", "$(reboot)", "é"])
def test_a_stack_name_pulumi_refuses_is_refused_before_any_path(project: Path, stack: str) -> None:
    err = assert_refused(["validate", "--stack", stack], "stack", "1 to 100 letters")
    assert "is not a Pulumi stack name" in err


def test_no_stack_file_names_the_file(project: Path) -> None:
    assert_refused(["validate", "--stack", "nowhere"], "Pulumi.nowhere.yaml", "pulumi stack init nowhere")


def test_unreadable_stack_file_is_named(project: Path) -> None:
    (project / f"Pulumi.{STACK}.yaml").mkdir()  # a folder where the file should be: readable by no one
    assert_refused(["validate", "--stack", STACK], f"Pulumi.{STACK}.yaml", "pulumi stack init")


# --------------------------------------------------------------------------- range limits, broken by one

def _only_cold_with_bound(values: Values, rpo: int, bound: int) -> None:
    values["cold_rpo_seconds"] = bound
    values["registers"][0].update(embassies=["ie"], rpo_seconds=rpo)


# (what, where, the last value accepted, the first refused). The numbers are written here, not read from
# the model: moving a bound in the code (host count 8 -> 80) must fail this test.
BOUNDS: list[tuple[str, Callable[[Values, Any], None], str, Any, Any]] = [
    ("retention minimum", lambda v, x: v["embassies"][0].update(retention_days=x), f"{E0}.retention_days", 1, 0),
    ("retention maximum", lambda v, x: v["embassies"][0].update(retention_days=x), f"{E0}.retention_days", 36500, 36501),
    ("host count minimum", lambda v, x: v["embassies"][0].update(host_count=x), f"{E0}.host_count", 1, 0),
    ("host count maximum", lambda v, x: v["embassies"][0].update(host_count=x), f"{E0}.host_count", 8, 9),
    ("volume minimum", lambda v, x: v["embassies"][0].update(volume_size_gb=x), f"{E0}.volume_size_gb", 20, 19),
    ("volume maximum", lambda v, x: v["embassies"][0].update(volume_size_gb=x), f"{E0}.volume_size_gb", 16384, 16385),
    ("cold RPO bound minimum", lambda v, x: v.update(cold_rpo_seconds=x), "data-embassy:cold_rpo_seconds", 60, 59),
    ("cold RPO bound maximum", lambda v, x: v.update(cold_rpo_seconds=x), "data-embassy:cold_rpo_seconds", 86400, 86401),
    # a register only the cold embassy holds: its RPO cannot be tighter than the cold bound (default 60 s) ...
    ("cold embassy's minimum RPO", lambda v, x: v["registers"][0].update(embassies=["ie"], rpo_seconds=x),
     "data-embassy:registers[0]", 60, 59),
    # ... nor than the bound the stack declares
    ("declared cold bound", lambda v, x: _only_cold_with_bound(v, x, bound=120), "data-embassy:registers[0]", 120, 119),
    ("rpo minimum", lambda v, x: v["registers"][0].update(rpo_seconds=x), "data-embassy:registers[0].rpo_seconds", 1, 0),
    ("rto minimum", lambda v, x: v["registers"][0].update(rto_seconds=x), "data-embassy:registers[0].rto_seconds", 1, 0),
    ("priority minimum", lambda v, x: v["registers"][2].update(priority=x), "data-embassy:registers[2].priority", 3, 0),
    ("tag value length", lambda v, x: v.update(classification="c" * x), "data-embassy:classification", 256, 257),
    ("embassy name length", lambda v, x: v["embassies"][0].update(name="d" * x), f"{E0}.name", 32, 33),
    ("public admin IPv4", lambda v, x: v["embassies"][1].update(admin_cidrs=[f"198.51.0.0/{x}"]),
     f"{E1}.admin_cidrs", 16, 15),
    ("public admin IPv4 in pieces", lambda v, x: v["embassies"][1].update(
        admin_cidrs=["203.0.0.0/17", "203.0.128.0/17", *(["198.51.100.0/32"] if x else [])]),
     f"{E1}.admin_cidrs", False, True),
    ("public admin IPv6", lambda v, x: v["embassies"][1].update(admin_cidrs=[f"2001:db8::/{x}"]),
     f"{E1}.admin_cidrs", 48, 47),
    ("private admin ranges do not count", lambda v, x: v["embassies"][1].update(admin_cidrs=[x]),
     f"{E1}.admin_cidrs", "10.0.0.0/8", "11.0.0.0/8"),
]


@pytest.mark.parametrize(("what", "change", "path", "last_ok", "first_bad"), BOUNDS, ids=[b[0] for b in BOUNDS])
def test_each_bound_holds_and_breaks_by_one(what: str, change: Callable[[Values, Any], None], path: str,
                                            last_ok: Any, first_bad: Any) -> None:
    ok = rehearsal_values()
    change(ok, last_ok)
    model._from_values("t", ok, source="t")  # the bound itself is accepted
    bad = rehearsal_values()
    change(bad, first_bad)
    with pytest.raises(model.ConfigInvalid) as exc:
        model._from_values("t", bad, source="t")
    assert [i.path for i in exc.value.issues] == [path], exc.value.render()


def test_stack_name_length_bound() -> None:
    model.check_stack_name("s" * 100)
    with pytest.raises(model.ConfigInvalid):
        model.check_stack_name("s" * 101)


def test_the_kms_deletion_window_bound(rehearsal_plan: dict[str, Any]) -> None:
    """EMB-KMS-03: a 30-day deletion window passes, 29 days is a finding."""
    from embassy.compliance import Context, evaluate
    from embassy.compliance.evaluate import resources_of_plan

    dep = model.load_stack("rehearsal", ROOT)

    def kms03(days: int) -> list[Any]:
        plan = copy.deepcopy(rehearsal_plan)
        key = next(r for r in plan["resources"] if r["type"] == "aws:kms/key:Key" and r["name"] == "de-key")
        key["inputs"]["deletionWindowInDays"] = days
        return [f for f in evaluate(Context.of(resources_of_plan(plan), dep)) if f.control == "EMB-KMS-03"]

    assert kms03(30) == []
    (finding,) = kms03(29)
    assert "29 days" in finding.message


def test_a_text_key_is_read_as_text_inside_a_pulumi_program() -> None:
    """`classification: "10"` is text; pulumi.Config.get_object would parse it into the number 10."""
    values = {**rehearsal_values(), "classification": "10"}
    parsed = {**values, "classification": 10}
    with pytest.raises(model.ConfigInvalid) as exc:
        model.from_pulumi_config("t", parsed.get)
    assert [i.path for i in exc.value.issues] == ["data-embassy:classification"]
    assert model.from_pulumi_config("t", parsed.get, values.get).classification == "10"


@pytest.mark.parametrize("project_file", [b"- name\n- runtime\n", b"name: [\n", "name: \xe9".encode("latin-1")])
def test_a_broken_project_file_fails_the_plan_with_a_hint(tmp_path: Path, project_file: bytes) -> None:
    from embassy.plan import PlanFailed, _program_path

    (tmp_path / "Pulumi.yaml").write_bytes(project_file)
    with pytest.raises(PlanFailed) as exc:
        _program_path(tmp_path)
    assert "Pulumi.yaml" in exc.value.message and exc.value.code == 2 and exc.value.hint


def test_cold_bound_is_sixty_seconds_and_importable() -> None:
    assert model.COLD_MIN_RPO_SECONDS == 60
    assert model.load_stack("rehearsal", ROOT).cold_rpo_seconds == 60  # the default the README states


def test_rpo_bound_per_embassy_mode() -> None:
    values = rehearsal_values()
    dep = model._from_values("t", values, source="t")
    population, land, files = (dep.registers[i] for i in range(3))  # rpo 5, 60, 300
    warm, cold = dep.embassy("de"), dep.embassy("ie")
    assert [dep.rpo_bound(r, warm) for r in (population, land, files)] == [5, 60, 300]
    assert [dep.rpo_bound(r, cold) for r in (population, land, files)] == [60, 60, 300]
    values["cold_rpo_seconds"] = 120
    slower = model._from_values("t", values, source="t")
    assert [slower.rpo_bound(r, slower.embassy("ie")) for r in slower.registers] == [120, 120, 300]


# --------------------------------------------------------------------------- plan --out


@pytest.mark.parametrize("where", ["folder", "under a file", "/proc"])
def test_plan_out_that_cannot_be_written_is_refused_before_planning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    import embassy.plan

    def must_not_run(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("planned although --out cannot be written")

    monkeypatch.setattr(embassy.plan, "compute_plan", must_not_run)
    monkeypatch.chdir(ROOT)
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    out = {"folder": tmp_path / "folder", "under a file": tmp_path / "file" / "plan.json",
           "/proc": Path("/proc/embassy-test/plan.json")}[where]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    err = assert_refused(["plan", "--stack", "rehearsal", "--out", str(out)], f"--out {out}", "--out")
    assert "cannot write" in err or "is a folder" in err or "is not a folder" in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no stray .tmp beside the target


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from embassy.errors import UserError
    from embassy.plan import write_plan

    def no_rename(self: Path, target: Any) -> Path:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "replace", no_rename)
    with pytest.raises(UserError) as exc:
        write_plan({"stack": "t", "resources": []}, tmp_path / "plan.json")
    assert "No space left" in exc.value.message and exc.value.code == 2
    assert list(tmp_path.iterdir()) == []


def test_a_plan_is_written_whole_and_alone(tmp_path: Path) -> None:
    from embassy.plan import write_plan

    write_plan({"stack": "t", "resources": []}, tmp_path / "out" / "plan.json")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["plan.json"]
    assert oct((tmp_path / "out" / "plan.json").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_python_m_embassy_plan_refuses_a_folder_as_out(tmp_path: Path) -> None:
    from embassy.plan import main

    assert main(["--root", str(ROOT), "--stack", "rehearsal", "--out", str(tmp_path)]) == 2


# --------------------------------------------------------------------------- output streams and help


def test_validate_prints_its_verdict_on_stdout_unwrapped(project: Path) -> None:
    long_name = "rehearsal-with-a-name-long-enough-to-pass-eighty-columns-on-its-own"
    (project / f"Pulumi.{long_name}.yaml").write_text(REHEARSAL_TEXT)
    result = CliRunner().invoke(app, ["validate", "--stack", long_name])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    (line,) = result.stdout.splitlines()
    assert len(line) > 80 and line.startswith(f"stack '{long_name}' is valid: 3 embassies")


@pytest.mark.parametrize("command", [[], ["validate"], ["plan"], ["check"], ["lab", "up"], ["deploy"]])
def test_help_shows_no_bool_metavar(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "--help" in result.stdout and "<bool>" not in result.stdout
