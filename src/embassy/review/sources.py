"""Read what a reviewer is given, whatever its shape, into one internal form.

A *state* (a plan, a `pulumi stack export`, a checkpoint) is a set of resources; a *change set*
(a `pulumi preview --json` digest, an engine event log) carries its own before and after per URN.
Both end as a `Side`: resources before and after, and the engine's op per URN when it said one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embassy.compliance.context import Resource
from embassy.compliance.evaluate import model_for
from embassy.errors import UserError
from embassy.model import Deployment

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

    def state_after(self) -> dict[str, Resource]:
        if self.resources is not None:
            return self.resources
        return {u: c.after for u, c in (self.changes or {}).items() if c.after is not None}

    def state_before(self) -> dict[str, Resource]:
        if self.resources is not None:
            return self.resources
        return {u: c.before for u, c in (self.changes or {}).items() if c.before is not None}


def stack_of_urn(urn: str) -> str | None:
    parts = urn.split("::")
    return parts[0].removeprefix("urn:pulumi:") if len(parts) >= 4 and parts[0].startswith("urn:pulumi:") else None


def _records(rows: Any) -> dict[str, Resource]:
    out: dict[str, Resource] = {}
    for rec in rows or []:
        if isinstance(rec, Mapping) and rec.get("urn"):
            res = Resource.from_record(rec)
            out[res.urn] = res
    return out


def _op(raw: str) -> str:
    return "replace" if raw in REPLACE_OPS else raw


def _merge(changes: dict[str, Change], op: str, urn: str, old: Any, new: Any, keys: list[str]) -> None:
    before = Resource.from_record(old) if isinstance(old, Mapping) and old else None
    after = Resource.from_record(new) if isinstance(new, Mapping) and new else None
    folded = _op(op)
    if folded == "delete" and after is not None:
        after = None  # a delete step may repeat the old state as new
    prev = changes.get(urn)
    if prev is None:
        changes[urn] = Change(urn, folded, before, after, sorted(set(keys)))
        return
    # A replacement arrives as several steps; keep the widest before/after and the strongest op.
    prev.before = prev.before or before
    prev.after = after if folded not in ("delete",) and after is not None else prev.after
    if folded == "replace" or prev.op == "replace":
        prev.op = "replace"
    prev.keys = sorted(set(prev.keys) | set(keys))


def _diff_keys(step: Mapping[str, Any], reasons_key: str) -> list[str]:
    detailed = step.get("detailedDiff")
    if isinstance(detailed, Mapping) and detailed:
        return [str(k) for k in detailed]
    return [str(k) for k in step.get(reasons_key) or []]


def from_preview(doc: Mapping[str, Any]) -> dict[str, Change]:
    changes: dict[str, Change] = {}
    for step in doc.get("steps") or []:
        if isinstance(step, Mapping) and step.get("urn"):
            _merge(changes, str(step.get("op", "")), str(step["urn"]), step.get("oldState"), step.get("newState"),
                   _diff_keys(step, "diffReasons"))
    return changes


def from_events(events: list[Mapping[str, Any]]) -> dict[str, Change]:
    """Engine events: step metadata in resourcePreEvent (planned) and resOutputsEvent (done).

    Traps: there the diff kind is `diffKind`, diff reasons are `diffs`, and `keys` are the *replace* keys.
    """
    changes: dict[str, Change] = {}
    for event in events:
        for kind in ("resourcePreEvent", "resOutputsEvent"):
            body = event.get(kind)
            if not isinstance(body, Mapping) or not isinstance(body.get("metadata"), Mapping):
                continue
            md = body["metadata"]
            urn = str(md.get("urn", ""))
            if not urn or (kind == "resOutputsEvent" and urn in changes):
                continue
            _merge(changes, str(md.get("op", "")), urn, md.get("old"), md.get("new"), _diff_keys(md, "diffs"))
    return changes


def policy_events(events: list[Mapping[str, Any]]) -> list[str]:
    """What a policy pack said during the run (`policyEvent`), so the review shows it beside its own findings."""
    notes = []
    for event in events:
        pe = event.get("policyEvent")
        if isinstance(pe, Mapping):
            notes.append(f"policy pack {pe.get('policyPackName', '?')}: {pe.get('policyName', '?')} "
                         f"({pe.get('enforcementLevel', '?')}) on {pe.get('resourceUrn') or 'the stack'}: "
                         f"{str(pe.get('message', '')).strip()}")
    return notes


def _parse_jsonl(text: str) -> list[Any] | None:
    rows = []
    for line in text.splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                return None
    return rows


def read_file(path: Path, root: Path) -> Source:
    """Detect the format of a file and read it."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}", "check the path and its permissions") from None
    try:
        doc: Any = json.loads(text)
    except json.JSONDecodeError:
        doc = _parse_jsonl(text)
        if doc is None:
            raise UserError(f"{path} is neither JSON nor JSON lines", FORMATS_HINT) from None
    label = str(path)
    if isinstance(doc, list) and doc and all(isinstance(e, Mapping) for e in doc) and \
            any("sequence" in e or "resourcePreEvent" in e or "preludeEvent" in e for e in doc):
        changes = from_events(doc)
        stack = next((stack_of_urn(u) for u in changes), None)
        return Source(label, "events", stack, changes=changes, model=model_for(stack, root),
                      engine_notes=policy_events(doc))
    if isinstance(doc, Mapping):
        if "checkpoint" in doc and isinstance(doc["checkpoint"], Mapping):
            latest = doc["checkpoint"].get("latest") or {}
            return _state(label, "checkpoint", latest.get("resources"), doc["checkpoint"].get("stack"), root)
        if "deployment" in doc and isinstance(doc["deployment"], Mapping):
            return _state(label, "export", doc["deployment"].get("resources"), None, root)
        if isinstance(doc.get("steps"), list) or "changeSummary" in doc:
            changes = from_preview(doc)
            stack = next((stack_of_urn(u) for u in changes), None)
            has_sames = any(c.op == "same" for c in changes.values())
            return Source(label, "preview", stack, changes=changes, model=model_for(stack, root), complete=has_sames)
        if isinstance(doc.get("resources"), list):
            stack = doc.get("stack") if isinstance(doc.get("stack"), str) else None
            return _state(label, "plan", doc["resources"], stack, root)
    raise UserError(f"{path}: unknown format", FORMATS_HINT)


def _state(label: str, kind: str, rows: Any, stack: Any, root: Path) -> Source:
    resources = _records(rows)
    name = stack if isinstance(stack, str) and stack else next((stack_of_urn(u) for u in resources), None)
    if isinstance(name, str) and "/" in name:  # org/project/stack in checkpoints
        name = name.rsplit("/", 1)[-1]
    return Source(label, kind, name, resources=resources, model=model_for(name, root))


# --------------------------------------------------------------------------- git refs


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)


def is_git_ref(root: Path, ref: str) -> bool:
    return _git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").returncode == 0


@contextmanager
def checkout(root: Path, ref: str) -> Iterator[Path]:
    """A temporary `git worktree` of a ref, removed afterwards whatever happens."""
    tmp = Path(tempfile.mkdtemp(prefix="embassy-review-"))
    tree = tmp / "tree"
    added = _git(root, "worktree", "add", "--detach", "--quiet", str(tree), ref)
    if added.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot check out {ref}: {added.stderr.strip()}", "give a commit, branch or tag of this repository")
    try:
        yield tree
    finally:
        _git(root, "worktree", "remove", "--force", str(tree))
        shutil.rmtree(tmp, ignore_errors=True)
        _git(root, "worktree", "prune")


_PLANS: dict[tuple[str, str, str], tuple[dict[str, Any], Deployment | None]] = {}


def read_ref(root: Path, ref: str, stack: str) -> Source:
    """The plan of `stack` as the code and config at `ref` produce it (once per commit in this process)."""
    from embassy.plan import compute_plan  # the plan module of this checkout plans the other one in a subprocess

    sha = _git(root, "rev-parse", f"{ref}^{{commit}}").stdout.strip()
    key = (str(root.resolve()), sha, stack)
    if key not in _PLANS:
        with checkout(root, sha) as tree:
            _PLANS[key] = (compute_plan(tree, stack), model_for(stack, tree))
    plan, deployment = _PLANS[key]
    src = _state(f"{ref} ({sha[:7]})", "git", plan.get("resources"), stack, root)
    src.model = deployment
    return src


def read(arg: str, root: Path, stack: str) -> Source:
    """A file (any supported format) or, failing that, a git ref of the repository at `root`."""
    path = Path(arg)
    if path.is_file():
        return read_file(path, root)
    if path.exists():
        raise UserError(f"{arg} is not a file", FORMATS_HINT)
    if _git(root, "rev-parse", "--git-dir").returncode == 0 and is_git_ref(root, arg):
        return read_ref(root, arg, stack)
    raise UserError(f"{arg}: no such file or git ref", FORMATS_HINT)
