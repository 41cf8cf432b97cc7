"""A stand-in for Qubes' backup engine in the benchmark: incompressible bytes,
optionally throttled, to stdout or a file.

Usage: python -m bench.producer --bytes N [--rate BYTES_PER_S] [--output FILE]

The data is one block of random bytes repeated: SSH does not compress here,
and no compressor with a window under the block size could shrink it either.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

BLOCK_SIZE = 16 * 1024 * 1024
CHUNK_SIZE = 1024 * 1024


def produce(total: int, rate: float, fd: int) -> None:
    """Write TOTAL bytes to FD at no more than RATE bytes/s (0 = as fast as possible)."""
    block = memoryview(os.urandom(BLOCK_SIZE))
    started = time.monotonic()
    sent = 0
    while sent < total:
        offset = sent % BLOCK_SIZE
        size = min(CHUNK_SIZE, total - sent, BLOCK_SIZE - offset)
        view = block[offset : offset + size]
        while view:
            written = os.write(fd, view)
            view = view[written:]
        sent += size
        if rate > 0:
            # Sleep until the bytes sent so far are "due": a steady rate, no bursts.
            delay = sent / rate - (time.monotonic() - started)
            if delay > 0:
                time.sleep(delay)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bytes", type=int, required=True, help="how many bytes to produce")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="bytes per second (0 = unthrottled)"
    )
    parser.add_argument("--output", help="write to this file (fsynced) instead of stdout")
    args = parser.parse_args(argv)
    if args.output:
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            produce(args.bytes, args.rate, fd)
            os.fsync(fd)
        finally:
            os.close(fd)
    else:
        try:
            produce(args.bytes, args.rate, sys.stdout.fileno())
        except BrokenPipeError:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
