"""The round's quick probe of a vault before restic: a cut-off vault is skipped in seconds, not retried for minutes."""

from __future__ import annotations

import socket

import pytest

from embassy.replication import round as replication_round


def test_a_listening_vault_answers_and_a_closed_port_does_not() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert replication_round.vault_answers({"endpoint": f"https://127.0.0.1:{port}"}, timeout=2)
    # The port is closed now: refused at once.
    assert not replication_round.vault_answers({"endpoint": f"https://127.0.0.1:{port}"}, timeout=2)



def _closed_port() -> int:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        return int(server.getsockname()[1])  # closed once the socket is: a connection is refused at once


def test_a_vault_that_accepts_no_connection_is_neither_written_nor_read_through_boto(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An upload or a read of the manifests fails at the probe, naming the endpoint (botocore's own connect
    attempts cost about 13 s per call against a cut-off vault); boto is never asked."""
    clients: list[object] = []
    monkeypatch.setattr(replication_round, "s3_client", lambda *a: clients.append(a))
    vault = {"endpoint": f"https://127.0.0.1:{_closed_port()}", "bucket": "b"}
    with pytest.raises(replication_round.VaultSilent, match=r"127\.0\.0\.1:\d+ accepts no connection within 5 s"):
        replication_round.upload(vault, "ca.pem", "manifests/0000000001.json", b"{}")
    with pytest.raises(replication_round.VaultSilent):
        replication_round.read_manifests(vault, "ca.pem")
    assert clients == []


def test_a_vault_that_accepts_a_connection_is_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A vault that answers the probe, however slowly it then serves, goes on to boto as before."""
    put: list[str] = []

    class S3:
        def head_object(self, **kw: object) -> None:
            from botocore.exceptions import ClientError

            raise ClientError({"Error": {"Code": "404"}}, "HeadObject")

        def put_object(self, **kw: object) -> None:
            put.append(str(kw["Key"]))

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setattr(replication_round, "s3_client", lambda *a: S3())
        vault = {"endpoint": f"https://127.0.0.1:{server.getsockname()[1]}", "bucket": "b"}
        replication_round.upload(vault, "ca.pem", "manifests/0000000001.json", b"{}")
    assert put == ["manifests/0000000001.json"]
