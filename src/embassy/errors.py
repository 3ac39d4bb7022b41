"""Errors a user can meet, rendered the pgBackRest way: short, specific, then a HINT."""

from __future__ import annotations

import sys
from typing import ClassVar

import typer

# Exit codes shared by every command (see DESIGN.md, "Interfaces").
EXIT_OK = 0
EXIT_FINDING = 1  # a mandatory finding, an integrity failure, a failed drill
EXIT_USAGE = 2  # bad input: nothing was changed


class UserError(Exception):
    """Bad input or an unmet precondition: exit 2, nothing changed."""

    def __init__(self, message: str, hint: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = code

    def render(self) -> str:
        return f"error: {self.message}\nHINT: {self.hint}"


def fail(message: str, hint: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print an error with its hint to stderr and return the Exit to raise."""
    print(f"error: {message}\nHINT: {hint}", file=sys.stderr)
    return typer.Exit(code)


# --------------------------------------------------------------------------- the registry
#
# One place naming every error a user or a drill can meet, each with a stable code, as pgBackRest's
# error registry does. A code never changes meaning and is never reused: scripts, drill reports and
# auditors refer to it (tests/unit/test_errors.py holds the table). The range says the exit code:
#   1xx bad input or an unmet precondition: exit 2, nothing changed
#   2xx integrity: something is not what was signed or expected: exit 1, naming the object
#   3xx an operation failed or missed its objective: exit 1
# Modules written before the registry raise a plain UserError (rendered without a code, as before);
# new code raises these. An EmbassyError is a UserError, so every `except UserError` handles it.

REGISTRY: dict[int, type[EmbassyError]] = {}


def exit_code_of(error_code: int) -> int:
    """The process exit code that an error code's range stands for."""
    return EXIT_USAGE if error_code < 200 else EXIT_FINDING


class EmbassyError(UserError):
    """An error of the registry: `error: [code]: message`, then `HINT:`; exit code from its range."""

    error_code: ClassVar[int]  # the stable number (UserError.code is the exit code)
    default_hint: ClassVar[str]

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if not 100 <= cls.error_code <= 399:
            raise TypeError(f"{cls.__name__}: error code {cls.error_code} is outside 100..399")
        if cls.error_code in REGISTRY:
            raise TypeError(f"{cls.__name__}: error code {cls.error_code} is taken by {REGISTRY[cls.error_code].__name__}")
        REGISTRY[cls.error_code] = cls

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint or self.default_hint, exit_code_of(self.error_code))

    def render(self) -> str:
        return f"error: [{self.error_code}]: {self.message}\nHINT: {self.hint}"

    def as_json(self) -> dict[str, object]:
        """As a report or a `--json` output names it."""
        return {"code": self.error_code, "error": type(self).__name__, "message": self.message, "hint": self.hint}


# 1xx: bad input, unmet preconditions (exit 2)


class OptionInvalid(EmbassyError):
    """A command-line option or argument has a value the command cannot take."""

    error_code = 100
    default_hint = "see `embassy COMMAND --help` for the values it takes"


class StackInvalid(EmbassyError):
    """The stack config does not validate (model.ConfigInvalid names each key path)."""

    error_code = 101
    default_hint = "run `embassy validate --stack S` and fix each key it names"


class TargetUnknown(EmbassyError):
    """A target other than lab or aws was asked for."""

    error_code = 102
    default_hint = "use --target lab or --target aws"


class RootRequired(EmbassyError):
    """The operation reaches lab hosts, whose clients run in a network namespace: root only."""

    error_code = 103
    default_hint = "run it as root, e.g. `sudo .venv/bin/embassy …`"


class ToolMissing(EmbassyError):
    """A program the operation needs is not installed (pulumi, the AWS CLI, chromium, …)."""

    error_code = 104
    default_hint = "install it (see README.md), then run the command again"


class EmbassyUnknown(EmbassyError):
    """An embassy name that the stack does not declare."""

    error_code = 105
    default_hint = "use one of the names in `data-embassy:embassies` of the stack config"


class HostUnknown(EmbassyError):
    """A host name that the target does not have."""

    error_code = 106
    default_hint = "use a host of the target's inventory (home, enclave-<embassy>)"


class InventoryInvalid(EmbassyError):
    """A site inventory that cannot be used: unreadable, not YAML, a key out of shape, or a secret written into it."""

    error_code = 140
    default_hint = "fix the key it names (see examples/sites/federation.yaml); credentials go in files or env vars"


class CredentialsUnavailable(EmbassyError):
    """A vault identity's credentials cannot be read: file missing or readable by others, environment unset."""

    error_code = 141
    default_hint = "write the identity's JSON credentials file (mode 0600), or export its environment variables"


class ManifestKeyMissing(EmbassyError):
    """Verify or restore outside the lab without `data-embassy:manifest_public_key`: nothing else is trusted."""

    error_code = 142
    default_hint = ("set data-embassy:manifest_public_key in the stack config to home's manifest public key "
                    "(PEM, Ed25519): outside the lab it is the only trust anchor")


class OutputsInvalid(EmbassyError):
    """The AWS target's stack outputs (--outputs FILE or `pulumi stack output --json`) are missing or malformed."""

    error_code = 150
    default_hint = "pass the stack's outputs: `pulumi stack output --json --stack S > outputs.json`, --outputs outputs.json"


class RoleNotAssumed(EmbassyError):
    """STS refused (or could not be asked) to let this controller assume one of the stack's roles."""

    error_code = 151
    default_hint = ("sign in as a principal the role's trust policy names (data-embassy:principals), e.g. "
                    "`aws sso login`, then run the command again")


class KeyInvalid(EmbassyError):
    """A key file cannot be read, is of the wrong kind, or is readable by others."""

    error_code = 107
    default_hint = "give the PEM file of an Ed25519 key (private keys: mode 0600)"


class ReportMissing(EmbassyError):
    """A report folder without report.json, or no folder at all."""

    error_code = 108
    default_hint = "give the folder that `embassy drill --report DIR` wrote"


class ReportInvalid(EmbassyError):
    """A report model that breaks its own rules (e.g. `passed` while a register missed its objective)."""

    error_code = 109
    default_hint = "build the report from the drill's measurements; do not set the verdict by hand"


class SharesRefused(EmbassyError):
    """Custody shares that cannot rebuild the bundle key: too few, mistyped, of another bundle version or stack."""

    error_code = 110
    default_hint = "type each share again from its sheet; ask for the sheets of the bundle version the vault holds"


class SandboxUnavailable(EmbassyError):
    """A git ref's program would run outside a sandbox (not root, or util-linux's unshare/setpriv missing): refused."""

    error_code = 123
    default_hint = ("run the review as root (CI does) so that the ref's code runs as an unprivileged user without "
                    "network, or plan each ref yourself in a checkout you trust (`embassy plan --stack S --out F`) "
                    "and review the two plan files")


class RefPlanFailed(EmbassyError):
    """A git ref's program, run in the review's sandbox, failed, overran its time or memory, or printed no plan."""

    error_code = 124
    default_hint = "check out the ref and run `embassy plan --stack S --out F` there to see the whole error"


# 2xx: integrity (exit 1)


class ManifestInvalid(EmbassyError):
    """A manifest that does not parse, has the wrong format version, or fails its own checksum."""

    error_code = 200
    default_hint = "the vault holds a damaged or forged manifest: restore from another embassy and investigate this vault"


class ManifestChainBroken(EmbassyError):
    """A manifest whose previous-hash does not match the one before it, or a gap in the rounds."""

    error_code = 201
    default_hint = "a manifest was removed, reordered or replaced: restore from another embassy and investigate this vault"


class SignatureInvalid(EmbassyError):
    """A signature that does not verify with the public key from the stack config."""

    error_code = 202
    default_hint = "the object was signed with another key or edited after signing: do not trust it"


class VaultStale(EmbassyError):
    """A vault whose chain head is behind the other embassies' by more than the register's objective."""

    error_code = 203
    default_hint = "the vault was rolled back or frozen: restore from a fresh embassy and investigate this one"


class DigestMismatch(EmbassyError):
    """Content whose digest differs from the one its manifest names."""

    error_code = 204
    default_hint = "the object was damaged or tampered with: it is not restored; use another embassy"


class ObjectMissing(EmbassyError):
    """An object a manifest names (backup, WAL segment, snapshot, pack) is not in the vault."""

    error_code = 205
    default_hint = "the vault lost or hid an object: run `embassy verify --full` and restore from another embassy"


class BackupInvalid(EmbassyError):
    """pgBackRest `verify` or `restic check` found an error in the repository."""

    error_code = 206
    default_hint = "the repository is damaged: run `embassy verify --full` and restore from another embassy"


class ReportEdited(EmbassyError):
    """A drill report whose files do not match their signature."""

    error_code = 207
    default_hint = "do not trust this report: ask for the original, or run the drill again"


class CheckFailed(EmbassyError):
    """A verification of the evidence failed (`pgbackrest verify`, `restic check`, a smoke digest…): its detail says which."""

    error_code = 208
    default_hint = "do not trust what the check covers; see its output in the report's evidence"


class BundleInvalid(EmbassyError):
    """A custody bundle that does not decrypt (AES-GCM tag) or whose header differs from what was sealed."""

    error_code = 209
    default_hint = "the bundle in this vault was damaged or replaced: restore at another embassy and investigate this vault"


class VaultDataInvalid(EmbassyError):
    """An object read from a vault is oversized, not UTF-8, nested too deep, of the wrong shape, or not what its
    name says: a finding of that vault only (it is then not comparable for the others)."""

    error_code = 230
    default_hint = "the vault serves objects no home state wrote: restore from another embassy and investigate this vault"


class FreshnessNotEstablished(EmbassyError):
    """Nothing anchors a vault's freshness: no high-water mark, no custody bundle, no other embassy to compare with."""

    error_code = 231
    default_hint = ("reach another embassy's vault, or restore with --shares (the bundle's round anchors it); "
                    "--accept-unanchored takes the chain as it is, and the outcome records that")


class LockInsufficient(EmbassyError):
    """An object a restore relies on is not under a COMPLIANCE lock until its write time plus the retention."""

    error_code = 232
    default_hint = "the vault lost or shortened its Object Lock: its content may be gone tomorrow; restore from another embassy"


# 3xx: failures (exit 1)


class VaultUnreachable(EmbassyError):
    """An embassy's vault does not answer within its bound."""

    error_code = 300
    default_hint = "check the embassy's network and vault; another embassy can still restore"


class VaultRefusedWrite(EmbassyError):
    """A vault refused a write (full, or credentials revoked)."""

    error_code = 301
    default_hint = "check the vault's capacity and the agent's credentials; the other embassies are unaffected"


class HostUnreachable(EmbassyError):
    """A host does not answer over SSH (lab) or SSM (aws)."""

    error_code = 302
    default_hint = "check that the host runs and that the controller reaches it (lab: `embassy lab status`)"


class HardeningFailed(EmbassyError):
    """A hardening role failed on a host."""

    error_code = 303
    default_hint = "see the run's Ansible artifacts, fix the cause and run `embassy harden` again"


class DeployFailed(EmbassyError):
    """A pyinfra deploy failed on a host."""

    error_code = 304
    default_hint = "fix the cause and run `embassy deploy` again (finished steps are not redone)"


class ReplicationFailed(EmbassyError):
    """A replication round did not complete for an embassy."""

    error_code = 305
    default_hint = "see `embassy replicate --json` for the embassy and register; the next round retries"


class RestoreFailed(EmbassyError):
    """A register could not be restored at the embassy."""

    error_code = 306
    default_hint = "see the report's failures; restore from another embassy while this one is investigated"


class SmokeCheckFailed(EmbassyError):
    """The restored state service did not answer the smoke queries with home's data."""

    error_code = 307
    default_hint = "the restored state differs from home's: do not serve it; see the report's evidence"


class ObjectiveMissed(EmbassyError):
    """A register was restored later (RTO) or with more loss (RPO) than its objective allows."""

    error_code = 308
    default_hint = "see the report's per-register objectives; tune the replication schedule or the objective"


class DrillFailed(EmbassyError):
    """A rehearsal that did not pass: the report names each failure."""

    error_code = 309
    default_hint = "read the report's failures section (report.html), fix the first, run the drill again"


class RoundRefused(EmbassyError):
    """A replication round refused to start: home's round state is lost and no vault can say where the chain stands."""

    error_code = 310
    default_hint = ("bring a vault back and run the round again; to start a new chain anyway, run "
                    "`python3 -m replication.round run --new-chain` on home (its signed manifests record it)")


class RestoreTestFailed(EmbassyError):
    """A restore test at an embassy did not pass: its result names the object and the reason."""

    error_code = 311
    default_hint = ("the embassy could not restore this point: run `embassy verify` on it, fix the first failure, "
                    "run `embassy restore-test` again")


class RestoreTestsNotEstablished(EmbassyError):
    """An embassy's restore-test records cannot be trusted (edited, forged, replayed, removed, unlocked) or are missing."""

    error_code = 233
    default_hint = ("treat the embassy's restore tests as failed: run `embassy restore-test` there and investigate "
                    "the vault object named")
