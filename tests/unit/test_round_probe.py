"""The round's quick probe of a vault before restic: a cut-off vault is skipped in seconds, not retried for minutes."""

from __future__ import annotations

import socket

from embassy.replication import round as replication_round


def test_a_listening_vault_answers_and_a_closed_port_does_not() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert replication_round.vault_answers({"endpoint": f"https://127.0.0.1:{port}"}, timeout=2)
    # The port is closed now: refused at once.
    assert not replication_round.vault_answers({"endpoint": f"https://127.0.0.1:{port}"}, timeout=2)

