"""Publish a drill report: its files written and signed (the model and its checks are drill/report.py, the
rendering drill/render.py; this module is the one that needs both)."""

from __future__ import annotations

import json
from pathlib import Path

from embassy.drill import report, signing
from embassy.drill.render import render_html, render_markdown


def write_report(rpt: report.Report, folder: Path, key_folder: Path) -> Path:
    """Write report.json, report.md, report.html and report.sig into `folder`; the key lives in `key_folder`."""
    key = signing.signing_key(key_folder)
    public = key.public_key()
    signer = report.Signer(public_key=signing.public_pem(public), fingerprint=signing.fingerprint(public))
    signed = rpt.model_copy(update={"signer": signer})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(signed.to_json(), indent=2, ensure_ascii=False) + "\n")
    (folder / "report.md").write_text(render_markdown(signed))
    (folder / "report.html").write_text(render_html(signed))
    digests = {name: report.file_digest(folder, name) for name in report.FILES}
    statement = report.signed_statement(digests, signing.fingerprint(public))
    sig = {**statement, "signature": signing.sign(key, statement)}
    (folder / report.SIGNATURE_FILE).write_text(json.dumps(sig, indent=2) + "\n")
    return folder
