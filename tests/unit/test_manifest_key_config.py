"""`data-embassy:manifest_public_key`: accepted by the strict model, refused unless it is one Ed25519 public key.

The adversary: whoever edits the stack config (or a host nation that would like verify to trust its own key)
slips in a key of another kind, a private key, two keys, or garbage. Each is refused with its key path, a HINT,
exit 2; a valid key becomes the only trust anchor of verify outside the lab (tests/unit/test_sites.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from embassy import model

ROOT = Path(__file__).resolve().parents[2]
KEY_PATH = "data-embassy:manifest_public_key"


def _public_pem(key: Any) -> str:
    return str(key.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo).decode())


def ed25519_pem() -> str:
    return _public_pem(Ed25519PrivateKey.generate())


def values(**extra: Any) -> dict[str, Any]:
    return {**model.read_stack_values(ROOT / "Pulumi.rehearsal.yaml"), **extra}


def test_a_valid_key_is_accepted_and_kept() -> None:
    pem = ed25519_pem()
    dep = model._from_values("t", values(manifest_public_key=pem), source="t")
    assert dep.manifest_public_key == pem
    assert model._from_values("t", values(), source="t").manifest_public_key is None  # optional in the lab


def _bad_keys() -> dict[str, str]:
    private = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()).decode()
    one = ed25519_pem()
    return {
        "rsa": _public_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "ec": _public_pem(ec.generate_private_key(ec.SECP256R1())),
        "ed448": _public_pem(ed448.Ed448PrivateKey.generate()),
        "private": private,
        "two keys": one + ed25519_pem(),
        "garbage body": one.replace(one.splitlines()[1], "A" * 60),
        "not pem": "MCowBQYDK2VwAyEA" + "A" * 44,
        "empty": "",
    }


@pytest.mark.parametrize("case", sorted(_bad_keys()))
def test_anything_but_one_ed25519_public_key_is_refused_with_path_and_hint(case: str) -> None:
    with pytest.raises(model.ConfigInvalid) as exc:
        model._from_values("t", values(manifest_public_key=_bad_keys()[case]), source="t")
    (issue,) = exc.value.issues
    assert issue.path == KEY_PATH
    assert "Ed25519" in issue.message and "PUBLIC KEY" in issue.hint
    if case == "private":
        assert "private key" in issue.message  # said plainly: a private key was about to be published


def test_a_number_is_refused_not_coerced() -> None:
    with pytest.raises(model.ConfigInvalid) as exc:
        model._from_values("t", values(manifest_public_key=42), source="t")
    assert exc.value.issues[0].path == KEY_PATH


def test_cli_validate_exit_2_for_a_bad_key_and_0_for_a_good_one(tmp_path: Path) -> None:
    exe = [sys.executable, "-m", "embassy.cli"]
    (tmp_path / "Pulumi.yaml").write_text("name: data-embassy\nruntime: python\n")
    for name, pem, code in (("good", ed25519_pem(), 0), ("bad", _bad_keys()["rsa"], 2)):
        doc = {"config": {f"data-embassy:{k}": v for k, v in values(manifest_public_key=pem).items()}}
        (tmp_path / f"Pulumi.{name}.yaml").write_text(yaml.safe_dump(doc))
        done = subprocess.run([*exe, "validate", "--stack", name], cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == code, done.stderr
        if code:
            assert KEY_PATH in done.stderr and "HINT:" in done.stderr


def test_the_pulumi_program_reads_the_key_as_text() -> None:
    """Inside `pulumi up` the value arrives as the raw PEM string (not JSON): it must reach the model unchanged."""
    pem = ed25519_pem()
    raw = model.to_config_json(values(manifest_public_key=pem))
    dep = model.from_pulumi_config("t", lambda k: None if f"data-embassy:{k}" not in raw else
                                   yaml.safe_load(raw[f"data-embassy:{k}"]),
                                   lambda k: raw.get(f"data-embassy:{k}"))
    assert dep.manifest_public_key == pem
