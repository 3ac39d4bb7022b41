"""`embassy plan`: run stacks/ under Pulumi's mocks and write the desired-state plan JSON."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from embassy import model
from embassy.commands.common import StackOpt, app, console, load, user_error
from embassy.errors import UserError

__all__ = ["app", "plan"]


@app.command()
def plan(stack: StackOpt,
         out: Annotated[Path, typer.Option("--out", "-o", help="where to write the plan JSON")] = Path("plan.json")) -> None:
    """Run the Pulumi program under mocks and write the plan: every resource, its inputs and provider region."""
    from embassy.plan import check_out_path, compute_plan, write_plan

    dep = load(stack)  # exit 2 with every config error before anything runs
    try:
        check_out_path(out)  # and with an --out it could not write
        with console.status(f"planning stack '{stack}' under Pulumi mocks ({len(dep.embassies)} embassies)"):
            result = compute_plan(model.project_root(), stack)
        write_plan(result, out)
    except UserError as exc:
        raise user_error(exc) from None
    kinds = Counter(r["type"] for r in result["resources"] if r["custom"])
    console.print(f"plan of stack '{stack}': {sum(kinds.values())} resources in {len(dep.embassies)} embassies "
                  f"({', '.join(e.region for e in dep.embassies)}) written to {out}", soft_wrap=True)
