"""The error registry: stable codes, one exit code per range, and the pgBackRest rendering."""

from __future__ import annotations

import pytest
import typer

from embassy import errors
from embassy.commands.common import user_error
from embassy.errors import EXIT_FINDING, EXIT_USAGE, REGISTRY, EmbassyError, UserError, fail

# The published codes. A code never changes meaning and is never reused: renumbering, renaming or
# removing one fails here; a new error is added to this table in the same change.
STABLE = {
    100: "OptionInvalid", 101: "StackInvalid", 102: "TargetUnknown", 103: "RootRequired", 104: "ToolMissing",
    105: "EmbassyUnknown", 106: "HostUnknown", 107: "KeyInvalid", 108: "ReportMissing", 109: "ReportInvalid",
    110: "SharesRefused", 123: "SandboxUnavailable", 124: "RefPlanFailed", 209: "BundleInvalid",
    140: "InventoryInvalid", 141: "CredentialsUnavailable", 142: "ManifestKeyMissing",
    150: "OutputsInvalid", 151: "RoleNotAssumed",
    200: "ManifestInvalid", 201: "ManifestChainBroken", 202: "SignatureInvalid", 203: "VaultStale",
    204: "DigestMismatch", 205: "ObjectMissing", 206: "BackupInvalid", 207: "ReportEdited", 208: "CheckFailed",
    230: "VaultDataInvalid", 231: "FreshnessNotEstablished", 232: "LockInsufficient",
    300: "VaultUnreachable", 301: "VaultRefusedWrite", 302: "HostUnreachable", 303: "HardeningFailed",
    304: "DeployFailed", 305: "ReplicationFailed", 306: "RestoreFailed", 307: "SmokeCheckFailed",
    308: "ObjectiveMissed", 309: "DrillFailed", 310: "RoundRefused", 311: "RestoreTestFailed",
    233: "RestoreTestsNotEstablished",
}


def test_the_registry_is_the_published_table() -> None:
    assert {code: cls.__name__ for code, cls in REGISTRY.items()} == STABLE
    # Every error class in the module is registered (none defined and forgotten), under its own name.
    defined = {name for name, obj in vars(errors).items()
               if isinstance(obj, type) and issubclass(obj, EmbassyError) and obj is not EmbassyError}
    assert defined == set(STABLE.values())
    assert len(set(STABLE.values())) == len(STABLE)


@pytest.mark.parametrize("code", sorted(STABLE))
def test_each_error_renders_code_message_and_hint(code: int) -> None:
    cls = REGISTRY[code]
    exc = cls("vault-de did not answer within 5 s")
    assert isinstance(exc, UserError)  # every `except UserError` handles it
    expected_exit = EXIT_USAGE if code < 200 else EXIT_FINDING
    assert exc.code == expected_exit and exc.error_code == code
    hint = cls.default_hint
    assert hint and hint[0].islower() and not hint.endswith("."), f"{cls.__name__}: pgBackRest-style hint"
    assert exc.render() == f"error: [{code}]: vault-de did not answer within 5 s\nHINT: {hint}"
    assert exc.as_json() == {"code": code, "error": cls.__name__, "message": "vault-de did not answer within 5 s",
                             "hint": hint}
    assert cls.__doc__, f"{cls.__name__} says what it means"


def test_a_specific_hint_replaces_the_default() -> None:
    exc = errors.VaultUnreachable("vault-ie did not answer within 5 s", "restore at de instead: `embassy restore --embassy de`")
    assert exc.render().endswith("\nHINT: restore at de instead: `embassy restore --embassy de`")


def test_the_cli_prints_the_rendering_and_exits_with_the_range_code(capsys: pytest.CaptureFixture[str]) -> None:
    exit_ = user_error(errors.DigestMismatch("register population: digest differs from manifest 42"))
    assert isinstance(exit_, typer.Exit) and exit_.exit_code == EXIT_FINDING
    assert capsys.readouterr().err == ("error: [204]: register population: digest differs from manifest 42\n"
                                       f"HINT: {errors.DigestMismatch.default_hint}\n")
    assert user_error(errors.KeyInvalid("k.pem is not a key")).exit_code == EXIT_USAGE


def test_a_taken_code_or_one_out_of_range_is_refused_when_defined() -> None:
    with pytest.raises(TypeError, match="taken by VaultUnreachable"):
        type("Another", (EmbassyError,), {"error_code": 300, "default_hint": "x"})
    with pytest.raises(TypeError, match=r"outside 100\.\.399"):
        type("Odd", (EmbassyError,), {"error_code": 42, "default_hint": "x"})
    assert REGISTRY[300] is errors.VaultUnreachable and 42 not in REGISTRY


def test_user_error_and_fail_are_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    exc = UserError("lab 3 is not up", "run `embassy lab up --stack rehearsal`")
    assert exc.code == EXIT_USAGE and exc.render() == "error: lab 3 is not up\nHINT: run `embassy lab up --stack rehearsal`"
    assert UserError("m", "h", EXIT_FINDING).code == 1
    exit_ = fail("bad --size-mb", "give a size between 0.1 and 100000 MB")
    assert exit_.exit_code == EXIT_USAGE
    assert capsys.readouterr().err == "error: bad --size-mb\nHINT: give a size between 0.1 and 100000 MB\n"
