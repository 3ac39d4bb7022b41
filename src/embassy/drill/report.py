"""The drill report: what was restored where, how fast, with what loss, and the evidence, signed.

A report folder holds report.json (the shape of DESIGN.md, plus the evidence), report.md and
report.html (rendered from the same model), and report.sig: an Ed25519 signature by the controller's
key over a statement naming the SHA-256 of report.json's canonical bytes and of report.md and
report.html as written. `verify_report(folder, public_key)` tells an auditor whether any of them was
edited; it trusts only the public key it is given, never the one the folder names.

The verdict is not a free field: a report passes only if it names no failure, every register was
verified and restored within its RTO and RPO objectives, and every verification succeeded.
`Report.build` derives the failures and the verdict from the measurements; a report whose `passed`
disagrees with them does not validate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from embassy.drill import signing
from embassy.errors import (
    REGISTRY,
    CheckFailed,
    DigestMismatch,
    EmbassyError,
    ObjectiveMissed,
    ReportEdited,
    ReportInvalid,
    ReportMissing,
    RestoreFailed,
    SignatureInvalid,
)
from embassy.replication import manifest

FORMAT = 1
FILES = ("report.json", "report.md", "report.html")
SIGNATURE_FILE = "report.sig"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Objective(_Strict):
    """What the stack promises for a register at this embassy (cold: RPO bounded by whole WAL segments)."""

    rto_seconds: float = Field(gt=0)
    rpo_seconds: float = Field(gt=0)


class BeyondSigned(_Strict):
    """What the restored register serves past the signed point, and where it came from (no signature covers it)."""

    transactions: int | None = Field(default=None, ge=0)  # None: not known
    source: str | None = None  # e.g. "streamed from home over the authenticated replication channel"
    read: str | None = None  # how the WAL beyond the point was read to count it (and where that read stopped)


class Proof(_Strict):
    """Up to which point a register is proven: the signed round and point its digest was verified at."""

    signed_round: int | None = None
    signed_point: str | None = None  # postgres: the LSN the signed digest is at; files: the restic snapshot
    beyond_signed: BeyondSigned = Field(default_factory=BeyondSigned)


class RegisterResult(_Strict):
    name: str
    kind: str  # postgres | files
    priority: int | None = None
    verified: bool  # its objects and digests matched the manifest
    restored: bool
    rto_seconds: float | None = None  # measured: incident -> register answering at the embassy
    rpo_seconds: float | None = None  # measured as rpo_method says (the drill's load log against the restored state)
    objective: Objective
    lost_transactions: int | None = None  # where it can be known
    digest: str | None = None  # recomputed after the restore
    manifest_digest: str | None = None  # what the manifest names
    proof: Proof | None = None  # filled from the restore: what is proven, and what is served beyond it
    rpo_method: str | None = None  # how rpo_seconds was measured, in words

    @property
    def rto_met(self) -> bool:
        return self.rto_seconds is not None and self.rto_seconds <= self.objective.rto_seconds

    @property
    def rpo_met(self) -> bool:
        return self.rpo_seconds is not None and self.rpo_seconds <= self.objective.rpo_seconds

    @property
    def ok(self) -> bool:
        return self.verified and self.restored and self.rto_met and self.rpo_met


class Step(_Strict):
    step: str
    start: datetime
    end: datetime
    ok: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> Step:
        if self.end < self.start:
            raise ValueError(f"step '{self.step}' ends before it starts")
        return self

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


class Verification(_Strict):
    """One check of the evidence: a manifest's signature, a link of the chain, a digest, `pgbackrest verify`…"""

    object: str
    ok: bool
    detail: str = ""


class Failure(_Strict):
    object: str
    reason: str
    code: int | None = None  # the error registry's code (src/embassy/errors.py)
    error: str | None = None  # its name

    @model_validator(mode="before")
    @classmethod
    def _named_by_its_code(cls, data: Any) -> Any:
        """The error's name follows from its code (the registry); a name that contradicts it is refused."""
        if isinstance(data, dict) and data.get("code") is not None:
            known = REGISTRY.get(data["code"])
            if known is None:
                raise ValueError(f"error code {data['code']} is not in the registry (src/embassy/errors.py)")
            if data.get("error") not in (None, known.__name__):
                raise ValueError(f"error code {data['code']} is {known.__name__}, not {data['error']}")
            data = {**data, "error": known.__name__}
        return data

    @classmethod
    def of(cls, obj: str, reason: str, error: type[EmbassyError]) -> Failure:
        return cls(object=obj, reason=reason, code=error.error_code, error=error.__name__)


class ChainHead(_Strict):
    round: int
    sha256: str


class ManifestEvidence(_Strict):
    """The manifest the restore trusted, and the head of the chain it was verified against."""

    key: str  # its object key in the vault
    sha256: str
    round: int
    chain_head: ChainHead
    signature_ok: bool
    public_key_fingerprint: str | None = None  # the manifest key's, from the stack config


class Watch(_Strict):
    """The watch of home's address: frames toward home counted in the kernel, from the incident's first step until
    the report is written. Frames before home's link was cut (the drill's last read of home, its connections
    closing) are reported; every frame after the cut fails the drill."""

    method: str  # how the frames were counted, in words
    dropped: int = Field(ge=0)  # frames the counting may have missed
    frames_toward_home: int = Field(ge=0)  # after the cut, until the report was written
    since: datetime | None = None  # counters in place
    cut_at: datetime | None = None  # home's link cut
    until: datetime | None = None  # last read, as the report was written
    frames_before_cut: int = Field(default=0, ge=0)
    sources: dict[str, dict[str, int]] = Field(default_factory=dict)  # after the cut: per port (who), per kind
    frames_on_bridge: int | None = None  # every frame into the bridge after the cut: the counting was live
    closing: str | None = None  # how home's connections were closed before the cut

    @model_validator(mode="after")
    def _count_is_its_sources(self) -> Watch:
        if self.sources and sum(sum(k.values()) for k in self.sources.values()) != self.frames_toward_home:
            raise ValueError(f"frames_toward_home={self.frames_toward_home} is not the sum of its sources")
        return self

    @property
    def ok(self) -> bool:
        return self.frames_toward_home == 0 and self.dropped == 0


class Where(_Strict):
    """Where the drill ran and on what: a reader must know a lab rehearsal with synthetic data from a real one."""

    target: Literal["lab", "site", "aws"]
    description: str
    data_size_mb: float | None = None
    data: Literal["synthetic", "real"]
    custody: str  # how the restore secrets were obtained
    officials_simulated: bool | None = None  # True: the drill itself played the custody officials


class Signer(_Strict):
    algorithm: Literal["ed25519"] = "ed25519"
    public_key: str  # PEM
    fingerprint: str


class Report(_Strict):
    format: int = FORMAT
    passed: bool
    stack: str
    embassy: str
    mode: Literal["warm", "cold"]
    incident_at: datetime  # home declared lost: RTO and RPO count from here
    started_at: datetime
    finished_at: datetime
    rto_seconds: float | None  # measured: incident -> the state service answering correctly at the embassy
    rpo_seconds: float | None  # measured: the worst register's
    registers: list[RegisterResult]
    timeline: list[Step]
    plan_hash: str | None = None  # sha256 of the stack's desired-state plan
    tool_versions: dict[str, str] = Field(default_factory=dict)
    manifest: ManifestEvidence | None = None
    freshness: dict[str, Any] | None = None  # the restore's freshness verdict: anchors, not comparable, accepted
    hardening: dict[str, int | None] = Field(default_factory=dict)  # host -> Lynis hardening index
    verifications: list[Verification] = Field(default_factory=list)
    failures: list[Failure] = Field(default_factory=list)
    watch: Watch | None = None
    where: Where | None = None
    # Each embassy's last restore test (issue 25), read from its vault's signed records before the incident:
    # beside the RTO this drill measured; evidence, not part of the verdict.
    restore_tests: list[dict[str, Any]] = Field(default_factory=list)
    signer: Signer | None = None

    @model_validator(mode="after")
    def _verdict_follows_the_evidence(self) -> Report:
        if self.passed != verdict(self.registers, self.verifications, self.failures, self.watch):
            raise ValueError(f"passed={self.passed} contradicts the registers, verifications and failures")
        return self

    @classmethod
    def build(cls, **fields: Any) -> Report:
        """A report whose failures name every register and check that fell short, and whose verdict follows."""
        probe = dict(fields)
        try:
            registers = [r if isinstance(r, RegisterResult) else RegisterResult.model_validate(r) for r in probe["registers"]]
            checks = [v if isinstance(v, Verification) else Verification.model_validate(v)
                      for v in probe.get("verifications", [])]
            failures = [f if isinstance(f, Failure) else Failure.model_validate(f) for f in probe.get("failures", [])]
            watch = probe.get("watch")
            watch = watch if watch is None or isinstance(watch, Watch) else Watch.model_validate(watch)
        except (KeyError, ValidationError) as exc:
            raise ReportInvalid(f"report fields are invalid: {exc}") from None
        failures += derived_failures(registers, checks, failures, watch)
        probe.update(registers=registers, verifications=checks, failures=failures, watch=watch,
                     passed=verdict(registers, checks, failures, watch))
        try:
            return cls.model_validate(probe)
        except ValidationError as exc:
            raise ReportInvalid(f"report fields are invalid: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = self.model_dump(mode="json")
        return data


def verdict(registers: list[RegisterResult], checks: list[Verification], failures: list[Failure],
            watch: Watch | None) -> bool:
    """Passed: registers all within their objectives, every check good, no failure, and home watched and unreached."""
    return (bool(registers) and not failures and all(r.ok for r in registers) and all(v.ok for v in checks)
            and watch is not None and watch.ok)


WATCH_OBJECT = "network:home"


def derived_failures(registers: list[RegisterResult], checks: list[Verification], named: list[Failure],
                     watch: Watch | None = None) -> list[Failure]:
    """A failure for each register and check that fell short and that no failure names yet."""
    already = {f.object for f in named}
    found: list[Failure] = []

    def add(obj: str, reason: str, error: type[EmbassyError]) -> None:
        if obj not in already:
            already.add(obj)
            found.append(Failure.of(obj, reason, error))

    for r in registers:
        obj = f"register {r.name}"
        if not r.verified:
            add(obj, "not verified against the manifest: nothing of it may be restored", DigestMismatch)
        elif not r.restored:
            add(obj, "not restored", RestoreFailed)
        elif not r.rto_met:
            add(obj, f"RTO {_s(r.rto_seconds)} exceeds the objective {_s(r.objective.rto_seconds)}", ObjectiveMissed)
        elif not r.rpo_met:
            add(obj, f"RPO {_s(r.rpo_seconds)} exceeds the objective {_s(r.objective.rpo_seconds)}", ObjectiveMissed)
    for v in checks:
        if not v.ok:
            add(v.object, v.detail or "verification failed", CheckFailed)
    if watch is None:
        add(WATCH_OBJECT, "not watched: nothing shows that the restore never reached home", CheckFailed)
    elif watch.dropped:
        add(WATCH_OBJECT, f"the watch may have missed {watch.dropped} frames: it proves nothing", CheckFailed)
    elif watch.frames_toward_home:
        who = "; ".join(f"{port}: {', '.join(f'{n} {k}' for k, n in kinds.items())}"
                        for port, kinds in watch.sources.items())
        add(WATCH_OBJECT, f"{watch.frames_toward_home} frames tried to reach home after it was cut ({who})", CheckFailed)
    return found


def _s(seconds: float | None) -> str:
    return "not measured" if seconds is None else f"{seconds:g} s"


def controller_tool_versions() -> dict[str, str]:
    """Versions of the controller's own tools (the drill adds the hosts': PostgreSQL, pgBackRest, restic)."""
    import platform

    found = {"python": platform.python_version()}
    for dist in ("embassy", "pyinfra", "ansible-core", "cryptography", "pydantic", "jinja2", "matplotlib"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return found


def plan_hash(plan: dict[str, Any]) -> str:
    """sha256 of a desired-state plan's canonical JSON: which plan the drill rehearsed."""
    return "sha256:" + manifest.sha256(manifest.canonical_json(plan))


# --------------------------------------------------------------------------- writing and verifying


def signed_statement(files: dict[str, str], signer_fingerprint: str) -> dict[str, Any]:
    return {"format": FORMAT, "algorithm": signing.ALGORITHM, "fingerprint": signer_fingerprint,
            "files": dict(sorted(files.items()))}


def file_digest(folder: Path, name: str) -> str:
    """report.json by its canonical bytes (indentation does not matter); the others as written."""
    data = (folder / name).read_bytes()
    if name == "report.json":
        data = manifest.canonical_json(signing.strict_loads(data))
    return manifest.sha256(data)


@dataclass
class ReportCheck:
    intact: bool
    fingerprint: str
    failures: list[Failure] = field(default_factory=list)


def check_report(folder: Path, public_key: Ed25519PublicKey | Path) -> ReportCheck:
    """Whether every file of the report is as it was signed by `public_key` (a key, or its PEM file); names each that is not.

    Bad input (no folder, no report.json) raises ReportMissing (exit 2); anything else that is wrong
    (a file edited, added to or removed from the statement, a signature by another key) is a failure.
    """
    if isinstance(public_key, Path):
        public_key = signing.load_public_key(public_key)
    if not folder.is_dir():
        raise ReportMissing(f"{folder} is not a folder")
    if not (folder / "report.json").is_file():
        raise ReportMissing(f"{folder} has no report.json")
    expected = signing.fingerprint(public_key)
    check = ReportCheck(intact=False, fingerprint=expected)
    fail = check.failures.append
    sig_path = folder / SIGNATURE_FILE
    if not sig_path.is_file():
        fail(Failure.of(SIGNATURE_FILE, "missing: the report is not signed", SignatureInvalid))
        return check
    try:
        sig = signing.strict_loads(sig_path.read_bytes())
        statement = signed_statement(dict(sig["files"]), str(sig["fingerprint"]))
        valid = (sig.get("format") == FORMAT and sig.get("algorithm") == signing.ALGORITHM
                 and signing.signature_valid(public_key, statement, str(sig["signature"])))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        fail(Failure.of(SIGNATURE_FILE, f"unreadable: {exc}", SignatureInvalid))
        return check
    if not valid:
        reason = (f"signed by another key ({sig['fingerprint']})" if sig["fingerprint"] != expected
                  else "the signature does not verify: the statement was edited")
        fail(Failure.of(SIGNATURE_FILE, reason, SignatureInvalid))
        return check
    signed_files = statement["files"]
    for name in FILES:
        if name not in signed_files:
            fail(Failure.of(name, "not covered by the signature", ReportEdited))
        elif not (folder / name).is_file():
            fail(Failure.of(name, "missing", ReportEdited))
        else:
            try:
                digest = file_digest(folder, name)
            except ValueError as exc:
                fail(Failure.of(name, f"not valid JSON any more: {exc}", ReportEdited))
                continue
            if digest != signed_files[name]:
                fail(Failure.of(name, "edited after signing: its SHA-256 differs from the signed one", ReportEdited))
    check.intact = not check.failures
    return check


def verify_report(folder: Path, public_key: Ed25519PublicKey | Path) -> bool:
    """True if the report in `folder` is exactly as `public_key`'s holder signed it."""
    return check_report(folder, public_key).intact
