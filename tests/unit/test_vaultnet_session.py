"""vaultnet.session(): the clients share botocore's parsed models, never their credentials.

The adversary is a shared session: the agent's keys signing the restore role's reads (or the other way round),
a session token carried into a client made without one, or the loader's search path growing with each client."""

from __future__ import annotations

from embassy.replication import vaultnet


def _client(keys: dict[str, str]) -> object:
    return vaultnet.client("https://127.0.0.1:1", "/nonexistent-ca.pem", keys, region="eu-north-1")


def test_each_client_signs_with_its_own_keys_on_the_shared_models() -> None:
    agent = _client({"access_key_id": "AKIAAGENTAGENTAGENT0", "secret_access_key": "agent-secret"})
    reader = _client({"access_key_id": "ASIAREADERREADER0000", "secret_access_key": "reader-secret",
                      "session_token": "reader-token"})
    paths = len(vaultnet.session()._loader.search_paths)
    for _ in range(5):
        _client({"access_key_id": "AKIAOTHEROTHEROTHER0", "secret_access_key": "x"})
    creds = [c._request_signer._credentials for c in (agent, reader)]  # type: ignore[attr-defined]
    assert [(k.access_key, k.secret_key, k.token) for k in creds] == [
        ("AKIAAGENTAGENTAGENT0", "agent-secret", None), ("ASIAREADERREADER0000", "reader-secret", "reader-token")]
    # The same parsed service description (parsed once), and no search path added per session.
    assert agent.meta.service_model._service_description is reader.meta.service_model._service_description  # type: ignore[attr-defined]
    assert len(vaultnet.session()._loader.search_paths) == paths
