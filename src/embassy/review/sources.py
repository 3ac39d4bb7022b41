"""Read what a reviewer is given, whatever its shape, into one internal form.

A *state* (a plan, a `pulumi stack export`, a checkpoint) is a set of resources; a *change set*
(a `pulumi preview --json` digest, an engine event log) carries its own before and after per URN.
Both end as a `Side`: resources before and after, and the engine's op per URN when it said one.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embassy.compliance.context import Resource
from embassy.compliance.evaluate import Finding, model_for
from embassy.compliance.records import check_records, kind_of
from embassy.errors import UserError
from embassy.model import Deployment
from embassy.review.engine import digest_findings, engine_findings, policy_events, prelude_region

FORMATS_HINT = ("give a plan (`embassy plan --out F`), a `pulumi preview --json` digest, an engine event log "
                "(`pulumi up --json` / `--event-log F`), a `pulumi stack export`, or a git ref")
# Steps of one replacement, folded into a single `replace`.
REPLACE_OPS = {"replace", "create-replacement", "delete-replaced", "read-replacement", "import-replacement",
               "discard-replaced"}


@dataclass
class Change:
    """What the engine (or a comparison) says happens to one URN."""

    urn: str
    op: str
    before: Resource | None = None
    after: Resource | None = None
    keys: list[str] = field(default_factory=list)

    @property
    def type(self) -> str:
        res = self.after or self.before
        return res.type if res else ""


@dataclass
class Source:
    """One input read: a state (resources) or a change set (changes with before and after)."""

    label: str
    kind: str  # plan | export | checkpoint | preview | events | git
    stack: str | None
    resources: dict[str, Resource] | None = None  # for states
    changes: dict[str, Change] | None = None  # for change sets
    model: Deployment | None = None
    complete: bool = True  # False when a digest leaves unchanged resources out
    engine_notes: list[str] = field(default_factory=list)  # e.g. policyEvents an event log carries
    engine_findings: list[Finding] = field(default_factory=list)  # a run that failed or a policy pack blocked
    default_region: str | None = None  # the prelude's aws:region, for resources on the default provider
    project: str | None = None
    file_format: str = ""  # how the file was stored: json, json lines, concatenated json, gzip, events wrapper
    provenance: list[str] = field(default_factory=list)  # a git ref: whose code made its plan, and how

    def state_after(self) -> dict[str, Resource]:
        if self.resources is not None:
            return self.resources
        return {u: c.after for u, c in (self.changes or {}).items() if c.after is not None}

    def state_before(self) -> dict[str, Resource]:
        if self.resources is not None:
            return self.resources
        return {u: c.before for u, c in (self.changes or {}).items() if c.before is not None}

    def describe(self) -> str:
        """What was read: a reviewer must see an empty or unread input, never mistake it for "no changes"."""
        res = self.state_after() if self.changes is None else {**self.state_before(), **self.state_after()}
        kinds = Counter(r.type.rsplit(":", 1)[-1] for r in res.values())
        top = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))[:6])
        more = f", +{len(kinds) - 6} more kinds" if len(kinds) > 6 else ""
        what = f"{len(self.changes)} step(s) over {len(res)} resource(s)" if self.changes is not None \
            else f"{len(res)} resource(s)"
        fmt = f", {self.file_format}" if self.file_format else ""
        return f"{self.label}: {self.kind}{fmt}, stack {self.stack or '?'}: {what}" + (f" ({top}{more})" if top else "")


def stack_of_urn(urn: str) -> str | None:
    parts = urn.split("::")
    return parts[0].removeprefix("urn:pulumi:") if len(parts) >= 4 and parts[0].startswith("urn:pulumi:") else None


def project_of_urn(urn: str) -> str | None:
    parts = urn.split("::")
    return parts[1] if len(parts) >= 4 and parts[0].startswith("urn:pulumi:") else None


def _records(rows: Any, where: str, label: str) -> dict[str, Resource]:
    out: dict[str, Resource] = {}
    for rec in check_records(rows, where, label):
        res = Resource.from_record(rec)
        out[res.urn] = res
    return out


def _op(raw: str) -> str:
    return "replace" if raw in REPLACE_OPS else raw


def _merge(changes: dict[str, Change], op: str, urn: str, before: Resource | None, after: Resource | None,
           keys: list[str]) -> None:
    folded = _op(op)
    if folded == "delete" and after is not None:
        after = None  # a delete step may repeat the old state as new
    if before is None and after is None:
        before = Resource.of_urn(urn)  # a step without state is still known by the type in its URN
    prev = changes.get(urn)
    if prev is None:
        changes[urn] = Change(urn, folded, before, after, sorted(set(keys)))
        return
    # A replacement arrives as several steps; keep the widest before/after and the strongest op.
    prev.before = prev.before if prev.before is not None and prev.before.inputs else before or prev.before
    prev.after = after if folded not in ("delete",) and after is not None else prev.after
    if folded == "replace" or prev.op == "replace":
        prev.op = "replace"
    prev.keys = sorted(set(prev.keys) | set(keys))


def _diff_keys(step: Mapping[str, Any], reasons_key: str) -> list[str]:
    detailed = step.get("detailedDiff")
    if isinstance(detailed, Mapping) and detailed:
        return [str(k) for k in detailed]
    reasons = step.get(reasons_key)
    return [str(k) for k in reasons] if isinstance(reasons, list) else []


def _state(value: Any, where: str, label: str, applied: bool, provider: str | None = None) -> Resource | None:
    if value is None or (isinstance(value, Mapping) and not value):
        return None
    check_records([value], where, label)
    return Resource.from_record(value, applied=applied, provider_hint=provider)


def from_preview(doc: Mapping[str, Any], label: str = "preview") -> dict[str, Change]:
    """A preview's states are planned, not applied: their inputs count, not the outputs they had."""
    steps = doc.get("steps")
    if steps is None:
        steps = []
    if not isinstance(steps, list):
        raise UserError(f"{label}: steps is {kind_of(steps)}, not a list of steps", FORMATS_HINT)
    changes: dict[str, Change] = {}
    for i, step in enumerate(steps):
        if not isinstance(step, Mapping) or not isinstance(step.get("urn"), str):
            raise UserError(f"{label}: steps[{i}] is not a step with a urn", FORMATS_HINT)
        where = f"steps[{i}]"
        prov = step.get("provider") if isinstance(step.get("provider"), str) else None
        before = _state(step.get("oldState"), f"{where}.oldState", label, applied=True, provider=prov)
        after = _state(step.get("newState"), f"{where}.newState", label, applied=False, provider=prov)
        _merge(changes, str(step.get("op", "")), step["urn"], before, after, _diff_keys(step, "diffReasons"))
    return changes


def from_events(events: list[Mapping[str, Any]], label: str = "events") -> dict[str, Change]:
    """Engine events: step metadata in resourcePreEvent (planned) and resOutputsEvent (done).

    Traps: there the diff kind is `diffKind`, diff reasons are `diffs`, and `keys` are the *replace* keys;
    older logs leave the state's `provider` empty and carry it in the metadata.
    """
    changes: dict[str, Change] = {}
    done: set[str] = set()
    for n, event in enumerate(events):
        for kind in ("resourcePreEvent", "resOutputsEvent"):
            body = event.get(kind)
            if not isinstance(body, Mapping) or not isinstance(body.get("metadata"), Mapping):
                continue
            md = body["metadata"]
            urn = md.get("urn")
            if not isinstance(urn, str) or not urn or urn in done:
                continue
            where = f"event {n + 1} {kind}.metadata"
            prov = md.get("provider") if isinstance(md.get("provider"), str) else None
            applied = kind == "resOutputsEvent"
            before = _state(md.get("old"), f"{where}.old", label, applied=True, provider=prov)
            after = _state(md.get("new"), f"{where}.new", label, applied=applied, provider=prov)
            if applied:  # what was done replaces what was planned
                changes.pop(urn, None)
                done.add(urn)
            _merge(changes, str(md.get("op", "")), urn, before, after, _diff_keys(md, "diffs"))
    return changes


# --------------------------------------------------------------------------- reading a file


def _parse_stream(text: str) -> list[Any] | None:
    """JSON lines, or JSON objects written one after another (pretty-printed events): None when neither."""
    decoder = json.JSONDecoder()
    rows: list[Any] = []
    pos, end = 0, len(text)
    while True:
        while pos < end and text[pos].isspace():
            pos += 1
        if pos >= end:
            return rows
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return None
        rows.append(value)


# What any input may hold, as read and (gzip) as expanded: a real state of a large stack is tens of MB; a 204 KB gzip
# expanded to 437 MB before this bound. Past it: exit 2, nothing parsed.
INPUT_LIMIT = 256 * 1024 * 1024


def _too_big(path: Path, what: str) -> UserError:
    return UserError(f"{path}: {what} more than {INPUT_LIMIT // (1024 * 1024)} MiB, the review's limit for one input",
                     "review a smaller input: a plan (`embassy plan --out F`), a preview digest or an event log of the "
                     "change; a state that large is not a Pulumi file this review reads")


def _text_of(path: Path) -> tuple[str, str]:
    """The file's text and how it was stored (gzip: the local backend's `PULUMI_SELF_MANAGED_STATE_GZIP`)."""
    try:
        with path.open("rb") as f:
            data = f.read(INPUT_LIMIT + 1)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}", "check the path and its permissions") from None
    if len(data) > INPUT_LIMIT:
        raise _too_big(path, "holds")
    stored = ""
    if data[:2] == b"\x1f\x8b":
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
                data = gz.read(INPUT_LIMIT + 1)  # never more than the limit in memory, whatever the ratio
        except (OSError, EOFError, zlib.error) as exc:
            raise UserError(f"{path} is a damaged gzip file: {exc}", "copy the checkpoint again from the backend") from None
        if len(data) > INPUT_LIMIT:
            raise _too_big(path, "expands to")
        stored = "gzip"
    try:
        return data.decode("utf-8-sig"), stored
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start})", FORMATS_HINT) from None


def _parse(path: Path) -> tuple[Any, str]:
    text, stored = _text_of(path)
    try:
        return json.loads(text), stored or "json"
    except json.JSONDecodeError:
        pass
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deep to be a Pulumi file", FORMATS_HINT) from None
    try:
        rows = _parse_stream(text)
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deep to be a Pulumi file", FORMATS_HINT) from None
    if not rows:
        why = "is empty" if not text.strip() else "is neither JSON nor JSON lines"
        raise UserError(f"{path} {why}: unknown format", FORMATS_HINT)
    lines = all(line.strip().startswith("{") and line.strip().endswith("}") for line in text.splitlines() if line.strip())
    return rows, ", ".join(x for x in (stored, "json lines" if lines else "concatenated json") if x)


def _is_events(doc: Any) -> bool:
    return isinstance(doc, list) and bool(doc) and all(isinstance(e, Mapping) for e in doc) and \
        any("sequence" in e or "resourcePreEvent" in e or "preludeEvent" in e or "summaryEvent" in e for e in doc)


def read_file(path: Path, root: Path) -> Source:
    """Detect the format of a file and read it."""
    doc, stored = _parse(path)
    label = str(path)
    if isinstance(doc, Mapping) and isinstance(doc.get("events"), list) and "steps" not in doc:
        doc, stored = doc["events"], f"{stored}, events wrapper"  # the service API's {"events": [...]}
    if isinstance(doc, list) and len(doc) == 1 and isinstance(doc[0], Mapping) and not _is_events(doc):
        doc = doc[0]
    if isinstance(doc, Mapping) and _is_events([doc]):  # an event log of a single event
        doc = [doc]
    if _is_events(doc):
        return _events_source(label, doc, stored, root)
    if isinstance(doc, Mapping):
        if "checkpoint" in doc:
            cp = _mapping(doc["checkpoint"], "checkpoint", label)
            latest = _mapping(cp.get("latest") or {}, "checkpoint.latest", label)
            return state_source(label, "checkpoint", latest.get("resources"), "checkpoint.latest.resources",
                                 cp.get("stack") or cp.get("target"), root, stored)
        if "latest" in doc and "target" in doc:  # checkpoint version 0 (2017)
            latest = _mapping(doc["latest"], "latest", label)
            return state_source(label, "checkpoint", latest.get("resources"), "latest.resources", doc["target"], root,
                                 stored)
        if "deployment" in doc:
            dep = _mapping(doc["deployment"], "deployment", label)
            return state_source(label, "export", dep.get("resources"), "deployment.resources", None, root, stored)
        if "steps" in doc or "changeSummary" in doc:
            return _preview_source(label, doc, stored, root)
        if "resources" in doc:
            return _plan_source(label, doc, root, stored)
    raise UserError(f"{path}: unknown format", FORMATS_HINT)


def _mapping(value: Any, where: str, label: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise UserError(f"{label}: {where} is {kind_of(value)}, not an object", FORMATS_HINT)
    return value


def _events_source(label: str, events: list[Mapping[str, Any]], stored: str, root: Path) -> Source:
    changes = from_events(events, label)
    urns = [*changes, *(str(e["policyEvent"].get("resourceUrn") or "") for e in events
                        if isinstance(e.get("policyEvent"), Mapping))]
    stack = next((st for u in urns if (st := stack_of_urn(u))), None)
    return Source(label, "events", stack, changes=changes, model=model_for(stack, root),
                  engine_notes=policy_events(events), engine_findings=engine_findings(events),
                  default_region=prelude_region(events), project=next((p for u in urns if (p := project_of_urn(u))), None),
                  file_format=stored or "json lines")


def _preview_source(label: str, doc: Mapping[str, Any], stored: str, root: Path) -> Source:
    changes = from_preview(doc, label)
    stack = next((stack_of_urn(u) for u in changes), None)
    summary = doc.get("changeSummary")
    has_sames = any(c.op == "same" for c in changes.values())
    # Nothing is left out when the change summary counts no unchanged resource (a new stack: creates only).
    if isinstance(summary, Mapping):
        sames = summary.get("same", 0)
        complete = has_sames or not (isinstance(sames, int | float) and sames > 0)
    else:
        complete = has_sames or (bool(changes) and all(c.op == "create" for c in changes.values()))
    config = doc.get("config")
    region = config.get("aws:region") if isinstance(config, Mapping) and isinstance(config.get("aws:region"), str) else None
    diagnostics = doc.get("diagnostics")
    if diagnostics is not None and not isinstance(diagnostics, list):
        raise UserError(f"{label}: diagnostics is {kind_of(diagnostics)}, not a list", FORMATS_HINT)
    return Source(label, "preview", stack, changes=changes, model=model_for(stack, root), complete=complete,
                  engine_findings=digest_findings(doc),
                  default_region=region, project=next((project_of_urn(u) for u in changes), None), file_format=stored)


def _plan_source(label: str, doc: Mapping[str, Any], root: Path, stored: str) -> Source:
    from embassy.compliance.evaluate import plan_model

    resources = _records(doc.get("resources"), "resources", label)
    if not resources:
        raise UserError(f"{label}: the plan has no resources", "write it again with `embassy plan --stack S --out F`")
    stack = doc.get("stack")
    src = Source(label, "plan", stack if isinstance(stack, str) else None, resources=resources,
                 project=doc.get("project") if isinstance(doc.get("project"), str) else None, file_format=stored)
    src.model = plan_model(stack, root, label)
    return src


def state_source(label: str, kind: str, rows: Any, where: str, stack: Any, root: Path, stored: str = "") -> Source:
    resources = _records(rows, where, label)
    name = stack if isinstance(stack, str) and stack else next((stack_of_urn(u) for u in resources), None)
    if isinstance(name, str) and "/" in name:  # org/project/stack in checkpoints
        name = name.rsplit("/", 1)[-1]
    return Source(label, kind, name, resources=resources, model=model_for(name, root),
                  project=next((project_of_urn(u) for u in resources), None), file_format=stored)
