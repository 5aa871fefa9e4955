#!/usr/bin/env python3
"""nsfwd.py NETNS_FILE LISTEN=TARGET... — TCP forwarder from host loopback into a network namespace.

Part of deploy/lab/lab.sh's two-DC lab (see deploy/lab/README.md, "How tests reach the DCs").
LISTEN and TARGET are IPv4:PORT. Every LISTEN socket is bound in the namespace this process
starts in (the host's); then the process joins NETNS_FILE's network namespace (setns), so every
connection it opens to a TARGET is made inside the namespace. One process, no fork per
connection, no new package (python3 comes with samba-tool).

Only loopback addresses are accepted on both sides: the lab never talks to anything else.
"""

import asyncio
import ctypes
import ipaddress
import os
import socket
import sys

CLONE_NEWNET = 0x40000000


def parse(spec):
    addr, _, port = spec.rpartition(":")
    ip = ipaddress.IPv4Address(addr)
    if not ip.is_loopback:
        sys.exit(f"nsfwd: {spec}: only loopback addresses are allowed")
    return str(ip), int(port)


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


def handler(target):
    async def handle(c_reader, c_writer):
        try:
            u_reader, u_writer = await asyncio.wait_for(asyncio.open_connection(*target), 10)
        except (OSError, asyncio.TimeoutError):
            # Nothing listens inside (the DC is not up yet, or stopped): the client sees a
            # closed connection, as it would connecting to the DC itself.
            c_writer.close()
            return
        await asyncio.gather(pipe(c_reader, u_writer), pipe(u_reader, c_writer))
        u_writer.close()
        c_writer.close()

    return handle


async def serve(listeners):
    for sock, target in listeners:
        await asyncio.start_server(handler(target), sock=sock)
    print("nsfwd: ready", flush=True)
    await asyncio.Event().wait()


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: nsfwd.py NETNS_FILE LISTEN_IP:PORT=TARGET_IP:PORT ...")
    netns = sys.argv[1]
    listeners = []
    for spec in sys.argv[2:]:
        listen, _, target = spec.partition("=")
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(parse(listen))
        s.listen(128)
        s.setblocking(False)
        listeners.append((s, parse(target)))
    # Python 3.11 (Debian 12) has no os.setns: call libc's.
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(netns, os.O_RDONLY)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        sys.exit(f"nsfwd: setns({netns}): {os.strerror(err)}")
    os.close(fd)
    asyncio.run(serve(listeners))


if __name__ == "__main__":
    main()
