"""A value that only became a secret is "now secret", not an update (issue 23, item 5); a secret whose plaintext
changed too, or cannot be known, stays an update. The adversary hides a real change behind a move to a secret."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from embassy.cli import app
from embassy.compliance.props import SECRET_SIG, SIG_KEY

runner = CliRunner()
URN = "urn:pulumi:s::p::aws:ssm/parameter:Parameter::token"


def export(path: Path, value: Any) -> Path:
    rec = {"urn": URN, "type": "aws:ssm/parameter:Parameter", "custom": True, "id": "token",
           "inputs": {"name": "token", "type": "SecureString", "value": value}, "outputs": {}}
    path.write_text(json.dumps({"version": 3, "deployment": {"resources": [rec]}}))
    return path


def secret(plaintext: str) -> dict[str, str]:
    return {SIG_KEY: SECRET_SIG, "plaintext": json.dumps(plaintext)}  # as `pulumi stack export --show-secrets`


@pytest.mark.parametrize(("after", "op", "key"), [
    (secret("s3cr3t"), "now-secret", "value (now secret)"),
    (secret("other"), "update", "value (secret)"),  # the plaintext changed as well: an update
    ({SIG_KEY: SECRET_SIG, "ciphertext": "v1:abc"}, "update", "value (secret)"),  # cannot be known: an update
])
def test_a_value_that_only_became_secret(tmp_path: Path, after: Any, op: str, key: str) -> None:
    base, head = export(tmp_path / "base.json", "s3cr3t"), export(tmp_path / "head.json", after)
    result = runner.invoke(app, ["review", str(base), str(head), "--format", "json"])
    doc = json.loads(result.stdout)
    assert [(c["op"], c["keys"]) for c in doc["changes"]] == [(op, [key])]
    assert "s3cr3t" not in result.stdout
