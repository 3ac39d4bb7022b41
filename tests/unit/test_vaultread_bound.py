"""vaultread's one bounded read: listed and unlisted objects alike carry at most MAX_BYTES of data, and an object
over the bound carries none, whichever of the listing and the read says it is larger (the host chooses both).

The adversary is the host nation serving a vault: it lists a small size and serves a huge body, or serves an
unlisted next round of any size, to fill the controller's memory or to have a part of an object parsed."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json

import pytest

from embassy.replication import verify
from embassy.replication.manifest import MAX_BYTES
from embassy.replication.vaultread import bounded_read

UNTIL = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)


class Body(io.BytesIO):
    """What botocore's StreamingBody offers that the reader uses: read(n); counts what was read."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.asked: list[int] = []

    def read(self, n: int | None = -1) -> bytes:  # type: ignore[override]
        self.asked.append(-1 if n is None else n)
        return super().read(n)


def got(data: bytes) -> dict[str, object]:
    return {"Body": Body(data), "ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": UNTIL,
            "LastModified": UNTIL - dt.timedelta(days=30)}


@pytest.mark.parametrize(("listed", "served"), [(0, 10), (10, 10), (0, MAX_BYTES)])
def test_within_the_bound_the_bytes_come_back_with_the_lock(listed: int, served: int) -> None:
    out = bounded_read(got(b"x" * served), listed)
    assert base64.b64decode(out["data"]) == b"x" * served and out["size"] == served
    assert out["lock_mode"] == "COMPLIANCE" and out["retain_until"] == UNTIL.isoformat()


@pytest.mark.parametrize(("listed", "served", "size"), [
    (0, MAX_BYTES + 1, MAX_BYTES + 1),            # the unlisted round: only the read says how large
    (5, 50 * MAX_BYTES, MAX_BYTES + 1),           # listed small, served huge: one byte past the bound is read
    (MAX_BYTES + 7, 3, MAX_BYTES + 7),            # listed larger than served: the larger word stands
])
def test_over_the_bound_no_data_is_kept_and_no_more_is_read(listed: int, served: int, size: int) -> None:
    response = got(b"y" * served)
    out = bounded_read(response, listed)
    assert "data" not in out and out["size"] == size
    assert response["Body"].asked == [MAX_BYTES + 1]


def test_verify_names_an_over_bound_object_without_parsing_it() -> None:
    entry = {"key": "manifests/0000000001.json", **bounded_read(got(b"{" * (MAX_BYTES + 1)))}
    stored = verify.parse_reader_output("ie", json.dumps({"ok": True, "objects": [entry]}))
    chain, failure = verify.walk(stored, None, stack="s", embassy="ie")
    assert chain == [] and failure is not None and failure[0] == "manifests/0000000001.json"
    assert "more than a manifest may have" in failure[1]
