"""vaultread's probe: a vault that accepts no TCP connection is reported unreachable after one connection attempt,
boto never asked (its retried connects cost several); a listening one, or any through a proxy, goes on to boto.

The adversary is the host nation (or the network path) cutting a vault off: the verdict must stay "unreachable"
(verify and the holds name it so and a round alerts), only sooner."""

from __future__ import annotations

import json
import socket

import pytest

from embassy.replication import vaultread


def _run(capsys: pytest.CaptureFixture[str], endpoint: str) -> dict[str, object]:
    spec = {"endpoint": endpoint, "bucket": "b", "ca_file": "ca.pem", "credentials": {"file": "none"}}
    assert vaultread.main([json.dumps(spec)]) == 0
    out: dict[str, object] = json.loads(capsys.readouterr().out)
    return out


def test_a_vault_that_accepts_no_connection_is_unreachable_without_boto(monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    for var in vaultread.PROXY_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    asked: list[object] = []
    monkeypatch.setattr(vaultread, "s3_client", lambda spec: asked.append(spec))
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
    out = _run(capsys, f"https://127.0.0.1:{port}")
    assert out["ok"] is False and f"127.0.0.1:{port} accepts no connection within 5 s" in str(out["error"])
    assert asked == []


def test_a_listening_vault_and_a_proxied_one_go_to_boto(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    def client(spec: object) -> object:
        raise ValueError("boto asked")  # stands for boto's own answer

    monkeypatch.setattr(vaultread, "s3_client", client)
    for var in vaultread.PROXY_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert "boto asked" in str(_run(capsys, f"https://127.0.0.1:{server.getsockname()[1]}")["error"])
        closed = server.getsockname()[1]
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")  # boto goes through it: the probe cannot judge
    assert "boto asked" in str(_run(capsys, f"https://127.0.0.1:{closed}")["error"])
