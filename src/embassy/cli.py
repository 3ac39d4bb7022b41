"""`embassy …`: the command-line interface. Each command is a thin layer over a library module.

The command modules register on `embassy.commands.common.app`; importing them here is what puts their
commands on it (they never import this module back)."""

from __future__ import annotations

from embassy.commands import assurance, compliance, custody, drill, lab, operations, plan, replication, report
from embassy.commands.common import StackOpt, app, load

# Each area's module, the commands it registers (one owner per module).
AREAS = {
    assurance: "restore-test, status",
    compliance: "check, review",
    custody: "custody init|rotate",
    drill: "restore, drill",
    lab: "lab up|down|status",
    operations: "harden, deploy",
    plan: "plan",
    replication: "replicate, verify",
    report: "report verify",
}


@app.command()
def validate(stack: StackOpt) -> None:
    """Load and check the stack config: exit 0 valid, 2 invalid (each error names its key path)."""
    dep = load(stack)
    # The verdict is the command's output: stdout, one line, never wrapped (errors go to stderr).
    print(f"stack '{dep.stack}' is valid: {len(dep.embassies)} embassies, "
          f"{len(dep.registers)} registers, home state {dep.state.name} ({dep.state.code})")


def main() -> None:  # pragma: no cover - console entry for `python -m embassy`
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
