"""`embassy report verify DIR --public-key FILE`: is a drill report exactly as it was signed?"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from embassy.commands.common import app, console, user_error
from embassy.errors import EXIT_FINDING, REGISTRY, ReportEdited, UserError

__all__ = ["app"]

report_app = typer.Typer(no_args_is_help=True, help="Drill reports: check that one was not edited.")
app.add_typer(report_app, name="report")


@report_app.command("verify")
def report_verify(
    folder: Annotated[Path, typer.Argument(help="the report folder (report.json, .md, .html, .sig)")],
    public_key: Annotated[Path, typer.Option("--public-key", "-k", help="PEM file of the signer's Ed25519 public key "
                                             "(report-signing.pub), obtained from the signer, not from the folder")],
    as_json: Annotated[bool, typer.Option("--json", help='print {"intact", "fingerprint", "failures": [{"object", "reason"}]}')]
    = False,
) -> None:
    """Exit 0 if every file of the report is as signed by that key; 1 naming each edited file; 2 bad input."""
    from embassy.drill.report import check_report
    from embassy.drill.signing import load_public_key

    try:
        check = check_report(folder, load_public_key(public_key))
    except UserError as exc:
        raise user_error(exc) from None
    if as_json:
        print(json.dumps({"folder": str(folder), "intact": check.intact, "fingerprint": check.fingerprint,
                          "failures": [f.model_dump() for f in check.failures]}, indent=2))
    if check.intact:
        if not as_json:
            console.print(f"report {folder}: intact, signed by {check.fingerprint}", soft_wrap=True)
        return
    if not as_json:
        for failure in check.failures:
            error = REGISTRY.get(failure.code or 0, ReportEdited)  # the code the check named it with
            console.print(error(f"{folder / failure.object}: {failure.reason}").render(), soft_wrap=True,
                          markup=False, highlight=False)
    raise typer.Exit(EXIT_FINDING)
