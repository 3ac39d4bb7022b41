"""The lab's central syslog collector: where every host forwards its log (rsyslog, TCP).

On AWS the enclaves ship their logs to CloudWatch Logs; in the lab this receiver plays the
collector, so a compromised host cannot erase its own trail. It runs in the controller namespace,
bound to the controller's address only, and appends each peer's messages to `<dir>/<peer>.log`.
Framing is rsyslog's plain TCP default: one message per line.

Run as `python -m embassy.lab.syslog --bind ADDR --port PORT --dir DIR` (the lab starts it).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import subprocess
import sys
from pathlib import Path

from embassy.lab.state import Proc
from embassy.lab.system import proc_of

LINE_LIMIT = 64 * 1024  # the reader's buffer; a longer message is written in pieces, never dropped


async def _receive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, folder: Path) -> None:
    peer = writer.get_extra_info("peername")[0]
    name = str(ipaddress.ip_address(peer))  # an address, never a path a peer could choose
    with (folder / f"{name}.log").open("ab", buffering=0) as log:
        while True:
            try:
                log.write(await reader.readuntil(b"\n"))
            except asyncio.LimitOverrunError as over:
                log.write(await reader.readexactly(over.consumed))
            except asyncio.IncompleteReadError as end:  # the peer closed: keep a last unterminated message
                if end.partial:
                    log.write(end.partial + b"\n")
                break
            except ConnectionError:
                break
    writer.close()


async def _serve(address: str, port: int, folder: Path) -> None:
    folder.mkdir(mode=0o750, parents=True, exist_ok=True)
    server = await asyncio.start_server(lambda r, w: _receive(r, w, folder), address, port, limit=LINE_LIMIT)
    async with server:
        await server.serve_forever()


def start(netns: str, address: str, port: int, folder: Path, log: Path) -> Proc:
    """Start the collector in the controller namespace; returns the process to stop by PID."""
    with log.open("ab") as out:
        child = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-m", "embassy.lab.syslog",
             "--bind", address, "--port", str(port), "--dir", str(folder)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    return proc_of(child.pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", required=True, help="the controller's lab address (never 0.0.0.0)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True, help="one <peer address>.log per host")
    args = parser.parse_args()
    if ipaddress.ip_address(args.bind).is_unspecified:
        parser.error("--bind must be a lab address, not the unspecified address")
    asyncio.run(_serve(args.bind, args.port, args.dir))


if __name__ == "__main__":
    main()
