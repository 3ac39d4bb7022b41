"""`embassy check`, `embassy review`, `embassy controls`: the compliance controls over plans and diffs."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from embassy import model
from embassy.commands.common import app, console, user_error
from embassy.compliance.catalog import FRAMEWORKS, controls
from embassy.compliance.checks import break_glass_roles
from embassy.compliance.context import Context
from embassy.compliance.evaluate import evaluate, mandatory_failed, plan_model, read_plan, resources_of_plan
from embassy.errors import EXIT_FINDING, EXIT_OK, UserError

__all__ = ["app", "check", "controls_cmd", "review_cmd"]

FORMATS = ("md", "json", "sarif")


@contextmanager
def progress(message: str) -> Iterator[None]:
    """A spinner on stderr while a long step runs, on a terminal only: piped output stays quiet and clean."""
    if not console.is_terminal:
        yield
        return
    with console.status(message):
        yield


def _write(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text)
        return
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    except OSError as exc:
        raise user_error(UserError(f"cannot write {out}: {exc}", "choose a writable --out path")) from None


@app.command()
def check(
    stack: Annotated[str | None, typer.Option("--stack", "-s", help="plan this stack (Pulumi.<stack>.yaml) and check it")] = None,
    plan: Annotated[Path | None, typer.Option("--plan", help="check a plan file written by `embassy plan --out F`")] = None,
    fmt: Annotated[str, typer.Option("--format", help="text | json")] = "text",
) -> None:
    """Evaluate every control over a plan: exit 0 when no mandatory control fails, 1 when one does, 2 on bad input."""
    if (stack is None) == (plan is None) or fmt not in ("text", "json"):
        raise user_error(UserError("give exactly one of --stack S or --plan FILE (and --format text|json)",
                                   "e.g. `embassy check --stack rehearsal` or `embassy check --plan out/plan.json`"))
    root = model.project_root()
    try:
        if plan is not None:
            doc = read_plan(plan)
            deployment = plan_model(doc.get("stack"), root, str(plan))
        else:
            from embassy.commands.common import load
            from embassy.plan import compute_plan

            deployment = load(str(stack))
            with progress(f"planning stack '{stack}' under Pulumi's mocks (15-20 s)"):
                doc = compute_plan(root, str(stack))
    except UserError as exc:
        raise user_error(exc) from None
    ctx = Context.of(resources_of_plan(doc), deployment)
    findings = evaluate(ctx)
    failed = mandatory_failed(findings)
    for role in break_glass_roles(ctx):
        console.print(f"note: break-glass role {role.name} exists: the policies attached to it are exempt from "
                      "EMB-IAM-01", soft_wrap=True)
    if fmt == "json":
        sys.stdout.write(json.dumps({"stack": doc.get("stack"), "passed": not failed,
                                     "findings": [f.as_json() for f in findings]}, indent=2) + "\n")
    else:
        for f in findings:
            print(f"{'FAIL' if f.mandatory else 'WARN'} {f.control} [{f.severity}] {f.urn}: {f.message}")
        n_mand = sum(1 for f in findings if f.mandatory)
        print(f"{len(controls())} controls over {len(doc.get('resources', []))} resources of stack "
              f"'{doc.get('stack')}': {n_mand} mandatory, {len(findings) - n_mand} advisory finding(s)")
    raise typer.Exit(EXIT_FINDING if failed else EXIT_OK)


@app.command("review")
def review_cmd(
    base: Annotated[str, typer.Argument(help="plan file, git ref, preview digest, event log or stack export")],
    head: Annotated[str | None, typer.Argument(help="the same kinds; omit for a digest or event log alone")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="md | json | sarif")] = "md",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="write here instead of stdout")] = None,
    stack: Annotated[str, typer.Option("--stack", "-s", help="the stack planned at git refs")] = "rehearsal",
    allow_different_stacks: Annotated[bool, typer.Option(
        "--allow-different-stacks", metavar="", help="compare BASE and HEAD even when they are different stacks")] = False,
) -> None:
    """Review a stack diff control by control: exit 0 no mandatory finding, 1 a mandatory finding, 2 bad input."""
    from embassy.review import read, render, review
    from embassy.review.gitrefs import Terminated, is_git_ref
    from embassy.review.sources import FORMATS_HINT

    if fmt not in FORMATS:
        raise user_error(UserError(f"unknown format '{fmt}'", f"use one of: {', '.join(FORMATS)}"))
    root = model.project_root()
    started = time.perf_counter()
    refs = [a for a in (base, head) if a is not None and not Path(a).exists() and is_git_ref(root, a)]
    try:
        with progress(f"planning {' and '.join(refs)} in temporary git worktrees" if refs else "reading"):
            head_src = read(head, root, stack) if head is not None else None
            base_src = read(base, root, stack)
        result = review(None, base_src) if head_src is None else \
            review(base_src, head_src, allow_different_stacks=allow_different_stacks)
        if head is not None and len(refs) == 2:
            from embassy.review.gitrefs import code_changes, code_note

            files = code_changes(root, base, head)
            if files:
                result.provenance.insert(0, code_note(base, head, files))
    except UserError as exc:
        raise user_error(exc) from None
    except RecursionError:
        raise user_error(UserError("an input is nested too deep to be a Pulumi file", FORMATS_HINT)) from None
    except Terminated:
        raise user_error(UserError("review interrupted (SIGTERM): its temporary worktrees were removed",
                                   "run it again", code=143)) from None
    try:  # the stack file only gives the report line numbers: a name that is not a stack's gives none
        stack_file = model.stack_file(result.stack, root) if result.stack else None
    except UserError:
        stack_file = None
    text = stack_file.read_text() if stack_file is not None and stack_file.is_file() else ""
    _write(render(result, fmt, text), out)
    console.print(f"review: {len(result.changes)} change(s), {len(result.weakenings)} weakening, "
                  f"{len(result.findings)} finding(s) in {time.perf_counter() - started:.2f}s", soft_wrap=True)
    raise typer.Exit(result.exit_code)


def controls_markdown() -> str:
    lines = ["| id | title | severity | level | scope | CIS AWS v3.0.0 | NIST 800-53 r5 | ISO 27001:2022 |",
             "|---|---|---|---|---|---|---|---|"]
    for c in controls():
        refs = [", ".join(c.frameworks.get(k, ())) or "—" for k in FRAMEWORKS]
        lines.append(f"| {c.id} | {c.title} | {c.severity.value} | {c.level} | {c.scope.value} | {' | '.join(refs)} |")
    return "\n".join(lines) + "\n"


@app.command("controls")
def controls_cmd(fmt: Annotated[str, typer.Option("--format", "-f", help="md | json")] = "md") -> None:
    """List the controls catalog (the table in README.md is this output)."""
    if fmt == "md":
        sys.stdout.write(controls_markdown())
    elif fmt == "json":
        rows = [{"id": c.id, "title": c.title, "rationale": c.rationale, "severity": c.severity.value,
                 "mandatory": c.mandatory, "scope": c.scope.value, "resource_types": list(c.resource_types),
                 "frameworks": {k: list(v) for k, v in c.frameworks.items()}, "remediation": c.remediation}
                for c in controls()]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        raise user_error(UserError(f"unknown format '{fmt}'", "use --format md or --format json"))
