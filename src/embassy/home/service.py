"""The home state's read-only state service: register queries over HTTP, answered in JSON.

Runs on the hosts with only what Debian ships: the python3 standard library and python3-psycopg
(Debian's FastAPI needs pydantic 1). Keep it that way: no other import from the embassy package.

    GET /health                                     200 when every register answers, else 503
    GET /registers                                  the registers and their query paths
    GET /registers/population/persons/<isikukood>   a person with addresses and documents
    GET /registers/land-register/parcels/<number>   a parcel (katastritunnus) with owners and deeds
    GET /registers/court-files/files/<number>       a court file (case.json) and its document list
    GET /registers/<other>/records/<reference>      a record of a generic postgres register

Config (JSON file, --config): {"bind": "10.x.y.z", "port": 8080, "conninfo": "host=/var/run/postgresql",
"databases": {"population": "population", ...}, "files": {"court-files": "/srv/registers/court-files"}}
"""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import json
import re
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ISIKUKOOD = re.compile(r"^[1-8]\d{10}$")
CADASTRAL = re.compile(r"^\d{5}:\d{3}:\d{4}$")
CASE_NUMBER = re.compile(r"^[1-4]-(\d{2})-\d{1,6}$")
REFERENCE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
FILE_NUMBER = re.compile(r"^[A-Za-z0-9-]{1,64}$")


class NotFound(Exception):
    pass


class BadRequest(Exception):
    pass


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class Registers:
    """Answers the queries; one short read-only connection per query."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.conninfo: str = config.get("conninfo", "host=/var/run/postgresql")
        self.databases: dict[str, str] = config.get("databases", {})
        self.files: dict[str, str] = config.get("files", {})

    def _query(self, register: str, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(f"{self.conninfo} dbname={self.databases[register]}", autocommit=True,
                             options="-c default_transaction_read_only=on", connect_timeout=5) as conn, \
                conn.cursor(row_factory=dict_row) as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())

    def person(self, code: str) -> dict[str, Any]:
        if not ISIKUKOOD.match(code):
            raise BadRequest(f"'{code}' is not a personal identity code (isikukood: 11 digits)")
        rows = self._query("population", "SELECT * FROM persons WHERE isikukood = %s", (code,))
        if not rows:
            raise NotFound(f"no person with isikukood {code}")
        person = rows[0]
        person["addresses"] = self._query(
            "population", "SELECT county, municipality, settlement, street, house, apartment, postal_code, ads_oid, "
            "valid_from, valid_to FROM addresses WHERE person_id = %s ORDER BY valid_from, id", (person["id"],))
        person["documents"] = self._query(
            "population", "SELECT kind, number, issued, expires, issuer FROM documents WHERE person_id = %s ORDER BY id",
            (person["id"],))
        return person

    def parcel(self, number: str) -> dict[str, Any]:
        if not CADASTRAL.match(number):
            raise BadRequest(f"'{number}' is not a cadastral number (katastritunnus, e.g. 78401:101:0010)")
        rows = self._query("land-register", "SELECT * FROM parcels WHERE cadastral_number = %s", (number,))
        if not rows:
            raise NotFound(f"no parcel {number}")
        parcel = rows[0]
        parcel["owners"] = self._query(
            "land-register", "SELECT owner_kind, owner_code, owner_name, share, since FROM owners WHERE parcel = %s "
            "ORDER BY id", (number,))
        parcel["deeds"] = self._query(
            "land-register", "SELECT entry_no, kind, signed, notary, price_eur FROM deeds WHERE parcel = %s "
            "ORDER BY entry_no", (number,))
        return parcel

    def record(self, register: str, reference: str) -> dict[str, Any]:
        if not REFERENCE.match(reference):
            raise BadRequest(f"'{reference}' is not a record reference")
        rows = self._query(register, "SELECT * FROM records WHERE reference = %s", (reference,))
        if not rows:
            raise NotFound(f"no record {reference} in {register}")
        return rows[0]

    def court_file(self, register: str, number: str) -> dict[str, Any]:
        root = Path(self.files[register])
        match = CASE_NUMBER.match(number)
        if match:  # court-files/<year>/<number>/case.json
            folder = root / f"20{match.group(1)}" / number
            case = folder / "case.json"
            if not case.is_file():
                raise NotFound(f"no court file {number}")
            body: dict[str, Any] = json.loads(case.read_text())
            body["stored"] = sorted(p.name for p in (folder / "documents").iterdir())
            return body
        if not FILE_NUMBER.match(number):
            raise BadRequest(f"'{number}' is not a file number")
        found = sorted(root.glob(f"*/{number}.txt"))
        if not found:
            raise NotFound(f"no file {number} in {register}")
        text = found[0].read_text()
        return {"number": number, "bytes": len(text.encode()), "title": text.splitlines()[0] if text else ""}

    def health(self) -> tuple[bool, dict[str, Any]]:
        registers: dict[str, Any] = {}
        for name in self.databases:
            try:
                rows = self._query(name, "SELECT register, seed, rows, generator FROM embassy_seed", ())
                registers[name] = {"ok": True, "seeded": rows}
            except Exception as exc:  # a register that cannot answer makes the service unhealthy
                registers[name] = {"ok": False, "error": str(exc).strip().splitlines()[0][:200]}
        for name, folder in self.files.items():
            ok = Path(folder).is_dir()
            registers[name] = {"ok": ok} if ok else {"ok": False, "error": f"{folder} is missing"}
        healthy = all(r["ok"] for r in registers.values())
        return healthy, {"status": "ok" if healthy else "degraded", "registers": registers}

    def index(self) -> dict[str, Any]:
        paths = {}
        for name in self.databases:
            kind = {"population": "persons/<isikukood>", "land-register": "parcels/<cadastral number>"}.get(name, "records/<ref>")
            paths[name] = f"/registers/{name}/{kind}"
        for name in self.files:
            paths[name] = f"/registers/{name}/files/<number>"
        return {"registers": paths}

    def route(self, path: str) -> tuple[int, Any]:
        parts = [p for p in path.split("?", 1)[0].split("/") if p]
        try:
            if parts == ["health"]:
                healthy, body = self.health()
                return (HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE), body
            if parts == ["registers"]:
                return HTTPStatus.OK, self.index()
            if len(parts) == 4 and parts[0] == "registers":
                _, register, what, key = parts
                if register == "population" and what == "persons" and register in self.databases:
                    return HTTPStatus.OK, self.person(key)
                if register == "land-register" and what == "parcels" and register in self.databases:
                    return HTTPStatus.OK, self.parcel(key)
                if what == "records" and register in self.databases:
                    return HTTPStatus.OK, self.record(register, key)
                if what == "files" and register in self.files:
                    return HTTPStatus.OK, self.court_file(register, key)
            raise NotFound(f"no such query: {path}")
        except BadRequest as exc:
            return HTTPStatus.BAD_REQUEST, {"error": str(exc)}
        except NotFound as exc:
            return HTTPStatus.NOT_FOUND, {"error": str(exc)}
        except Exception as exc:  # the database is down or broken: say so, do not crash the server
            return HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"register unavailable: {str(exc).strip()[:200]}"}


def make_server(config: dict[str, Any]) -> ThreadingHTTPServer:
    registers = Registers(config)

    class Handler(BaseHTTPRequestHandler):
        server_version = "embassy-state/1"

        def do_GET(self) -> None:
            status, body = registers.route(self.path)
            data = json.dumps(body, default=_json_default, ensure_ascii=False, sort_keys=True).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _refuse(self) -> None:
            self.send_error(HTTPStatus.METHOD_NOT_ALLOWED, "read-only service")

        do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

        def log_message(self, format: str, *args: Any) -> None:  # one line per request, to the journal
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

    if config.get("bind") in (None, "", "0.0.0.0", "::"):
        raise SystemExit("error: the state service binds to one address only\nHINT: set \"bind\" in the config")
    server = ThreadingHTTPServer((config["bind"], int(config.get("port", 8080))), Handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The home state's read-only register service.")
    parser.add_argument("--config", type=Path, default=Path("/etc/embassy/state-service.json"))
    args = parser.parse_args(argv)
    server = make_server(json.loads(args.config.read_text()))
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
