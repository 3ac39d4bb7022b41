"""Reaching an S3 vault, the one way every part of the suite does it: a TCP probe, an S3 client, a bounded listing.

Standard library only at import (boto3 is imported when a client is made: Debian's python3-boto3 on the hosts):
this module runs on the hosts (uploaded with the replication modules; home's round and pgBackRest probes) and on
the controller (vaultaccess, the lab's bucket setup, vaultread inside the namespace where the vault is).
"""

from __future__ import annotations

import socket
import threading
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

# A vault that accepts no TCP connection within this is unreachable: boto's own connect timeout, where its retried
# connects and reads cost several times that (about 13 s per upload, measured).
PROBE_SECONDS = 5.0


def address(endpoint: str) -> tuple[str, int]:
    """(host, port) of an https endpoint URL (443 when it names none)."""
    url = urllib.parse.urlsplit(endpoint)
    return url.hostname or "", url.port or 443


def refusal(where: tuple[str, int], timeout: float = PROBE_SECONDS) -> OSError | None:
    """Why `where` accepts no TCP connection within `timeout`, or None if it accepts one (a probe, not a check)."""
    try:
        socket.create_connection(where, timeout=timeout).close()
    except OSError as exc:
        return exc
    return None


_loader: Any = None
_loader_lock = threading.Lock()


def session() -> Any:
    """A new boto3 session (its own credentials, config and handlers) on this process's one botocore data loader: the
    service models and endpoint rules (megabytes of JSON) are parsed once per process, not once per client (about
    0.1 s of CPU each, measured; a restore or a verify makes dozens of clients)."""
    import boto3
    import botocore.session

    global _loader
    core = botocore.session.get_session()
    with _loader_lock:
        if _loader is None:
            _loader = core.get_component("data_loader")
        else:
            core.register_component("data_loader", _loader)
        made = boto3.session.Session(botocore_session=core)
        # boto3 adds its own data folder to the loader's search path for each session: once is enough.
        _loader.search_paths[:] = list(dict.fromkeys(_loader.search_paths))
    return made


def client(endpoint: str, ca_file: str, keys: Mapping[str, Any], *, region: str = "us-east-1",
           addressing: str = "path", read_timeout: float = 30) -> Any:
    """A boto3 S3 client: TLS verified against `ca_file` (never the environment's AWS_CA_BUNDLE), the keys given
    (a role's session token too, when there is one), two attempts, a 5 s connect timeout."""
    from botocore.config import Config

    return session().client(
        "s3", endpoint_url=endpoint, verify=ca_file, region_name=region,
        aws_access_key_id=keys["access_key_id"], aws_secret_access_key=keys["secret_access_key"],
        aws_session_token=keys.get("session_token"),
        config=Config(s3={"addressing_style": addressing}, retries={"max_attempts": 2},
                      connect_timeout=5, read_timeout=read_timeout))


class Bounded(Exception):
    """The vault lists more than a reader takes."""


def listed(s3: Any, bucket: str, prefix: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Every object the vault lists under `prefix` (its listing entries); Bounded past `limit` of them."""
    items: list[dict[str, Any]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        items += page.get("Contents", []) or []
        if limit is not None and len(items) > limit:
            raise Bounded(f"more than {limit} objects under {prefix}")
    return items


def read_bounded(s3: Any, bucket: str, items: Iterable[dict[str, Any]], max_bytes: int,
                 max_total: int | None = None) -> Iterator[tuple[dict[str, Any], Any, bytes | None]]:
    """Each listed item with its GET response and at most max_bytes + 1 of its bytes (one past the bound shows that
    it is over); one the listing says is larger, or past max_total bytes read in all, is not read: (item, None, None).
    The vault's host chooses what it lists: this is the one reader of manifests, home's and the controller's."""
    total = 0
    for item in items:
        size = int(item.get("Size") or 0)
        if size > max_bytes or (max_total is not None and total + size > max_total):
            yield item, None, None
            continue
        got = s3.get_object(Bucket=bucket, Key=item["Key"])
        data = got["Body"].read(max_bytes + 1)
        total += max(size, len(data))
        yield item, got, data
