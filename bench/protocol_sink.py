#!/usr/bin/python3
"""A login shell for bench/carrier_overhead.py: takes `put NAME` in protocol 3
(or 2, when ~/protocol says "2"), parses the frames, discards the data, and
answers with a receipt that echoes the client's own length and digest -- the
server side costs little, so the sender's CPU is what the bench compares.
Standard library only: it runs under the system's python3 as a test account."""

import json
import os
import struct
import sys

ACK_EVERY = 16 * 1024 * 1024


def main():
    try:
        with open(os.path.expanduser("~/protocol")) as handle:
            protocol = handle.read().strip()
    except FileNotFoundError:
        protocol = "3"
    verb, _, name = sys.argv[2].partition(" ")
    if verb != "put":
        sys.exit(64)
    out = sys.stdout.buffer
    if protocol == "3":
        out.write(b'{"offset": 0}\n')
        out.flush()
    stdin = sys.stdin.buffer.raw
    buffer = bytearray(4 * 1024 * 1024 + 5)
    view = memoryview(buffer)
    total = acked = 0

    def read_exactly(count):
        done = 0
        while done < count:
            got = stdin.readinto(view[done:count])
            if not got:
                sys.exit(65)
            done += got
        return bytes(view[:count]) if count <= 40 else None

    while True:
        kind, length = struct.unpack(">cI", read_exactly(5))
        if kind == b"E":
            size, digest = struct.unpack(">Q32s", read_exactly(length))
            break
        read_exactly(length)
        total += length
        if protocol == "3" and total - acked >= ACK_EVERY:
            acked = total
            out.write(b'{"ack": %d}\n' % acked)
            out.flush()
    if size != total:
        sys.exit(65)
    record = {"name": name, "size": size, "sha256": digest.hex(), "mtime": 1700000000}
    out.write(json.dumps(record).encode() + b"\n")
    out.flush()


main()
