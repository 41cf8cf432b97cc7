"""The shell's receive loop: one thread (read -> hash -> write, what the shell
runs) against a reader + writer thread (what it ran before protocol 3), and
the cost of the acks' fdatasync cadence.

Usage (from the repository root; any user, no sshd):
    python -m bench.shell_loop [--mib 1024] [--reps 5] [--dir /var/tmp]

A producer process writes the framed stream (1 MiB D frames, as the carrier
sends) into a pipe enlarged to 1 MiB (as the shell enlarges sshd's); the
consumer runs in this process and writes to a file in --dir, ending with one
fsync. Prints MB/s and consumer CPU seconds per GiB, medians of --reps.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import queue
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from qbackup_protocol import wire
from server_shell import storage, upload
from server_shell.config import ShellConfig

MIB = 1024 * 1024


def produce(write_fd: int, total: int) -> None:
    """Write TOTAL bytes as a framed stream (1 MiB frames + E frame), then exit."""
    block = os.urandom(16 * MIB)
    hasher = hashlib.sha256()
    sent = 0
    while sent < total:
        length = min(MIB, total - sent)
        piece = block[sent % (16 * MIB) : sent % (16 * MIB) + length]
        hasher.update(piece)
        storage.write_all(write_fd, wire.encode_data_header(length) + piece, 0)
        sent += length
    storage.write_all(write_fd, wire.encode_end_frame(total, hasher.digest()), 0)


class Unlimited:
    """A space guard that allows everything (the benchmark measures the loop)."""

    def claim(self, count: int) -> None:
        return


def single(stdin: int, fd: int, state_fd: int, sync_interval: int) -> int:
    config = ShellConfig(sync_interval=sync_interval, idle_timeout=3600)
    receiving = upload.Upload("bench", -1, "bench", fd, state_fd, hashlib.sha256(), 0,
                              Unlimited())  # type: ignore[arg-type]
    return upload.receive(receiving, stdin, config, lambda fields: None)


def threaded(stdin: int, fd: int, state_fd: int, sync_interval: int) -> int:
    """The pre-protocol-3 design: the main thread reads whole frames into up
    to 4 buffers, a writer thread hashes and writes them."""
    work: queue.SimpleQueue[tuple[bytearray, int] | None] = queue.SimpleQueue()
    free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
    hasher = hashlib.sha256()

    def write() -> None:
        while (item := work.get()) is not None:
            buffer, length = item
            view = memoryview(buffer)[:length]
            hasher.update(view)
            written = 0
            while written < length:
                written += os.write(fd, view[written:])
            free.put(buffer)

    thread = threading.Thread(target=write)
    thread.start()
    allocated = 0
    total = 0
    header = memoryview(bytearray(5))
    try:
        while True:
            read_exactly(stdin, header)
            frame = wire.decode_frame_header(bytes(header))
            if frame.kind == wire.FRAME_END:
                break
            if allocated < 4 and free.empty():
                allocated += 1
                buffer = bytearray(wire.MAX_DATA_FRAME)
            else:
                buffer = free.get()
            read_exactly(stdin, memoryview(buffer)[:frame.length])
            work.put((buffer, frame.length))
            total += frame.length
        read_exactly(stdin, memoryview(bytearray(wire.END_PAYLOAD.size)))
    finally:
        work.put(None)
        thread.join()
    return total


def read_exactly(fd: int, view: memoryview) -> None:
    while view:
        count = os.readv(fd, [view])
        if count == 0:
            raise EOFError
        view = view[count:]


def run_once(consume: Callable[[int, int, int, int], int], total: int, directory: str,
             sync_interval: int) -> tuple[float, float]:
    """Return (MB/s, consumer CPU s/GiB) of one transfer of TOTAL bytes."""
    read_fd, write_fd = os.pipe()
    fcntl.fcntl(read_fd, fcntl.F_SETPIPE_SZ, MIB)
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        produce(write_fd, total)
        os._exit(0)
    os.close(write_fd)
    with tempfile.TemporaryDirectory(dir=directory) as work:
        fd = os.open(os.path.join(work, "data"), os.O_WRONLY | os.O_CREAT, 0o600)
        state_fd = os.open(os.path.join(work, "state"), os.O_RDWR | os.O_CREAT, 0o600)
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.monotonic()
        assert consume(read_fd, fd, state_fd, sync_interval) == total
        os.fsync(fd)
        elapsed = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        for open_fd in (fd, state_fd, read_fd):
            os.close(open_fd)
    os.waitpid(pid, 0)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return total / elapsed / 1e6, cpu / (total / 1024**3)


VARIANTS: list[tuple[str, Any, int]] = [
    ("single thread, no acks", single, 1 << 62),
    ("writer thread (before)", threaded, 1 << 62),
    ("single thread, ack every 16M", single, 16 * MIB),
    ("single thread, ack every 4M", single, 4 * MIB),
    ("single thread, ack every 64M", single, 64 * MIB),
]


def measure(mib: int = 1024, reps: int = 5, directory: str = "/var/tmp"
            ) -> dict[str, tuple[float, float]]:
    """Given the size, the repetitions and where to write, return {variant:
    (median MB/s, median consumer CPU s/GiB)} (reusable by bench/run.py)."""
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in VARIANTS}
    for _ in range(reps):  # interleaved, so load changes hit every variant alike
        for name, consume, interval in VARIANTS:
            results[name].append(run_once(consume, mib * MIB, directory, interval))
    return {name: (statistics.median(v[0] for v in values), statistics.median(v[1] for v in values))
            for name, values in results.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--dir", default="/var/tmp")
    options = parser.parse_args(argv)
    print(f"{options.mib} MiB per run, medians of {options.reps}, into {options.dir}")
    for name, (rate, cpu) in measure(options.mib, options.reps, options.dir).items():
        print(f"  {name:32s} {rate:7.0f} MB/s  {cpu:5.2f} CPU-s/GiB")


if __name__ == "__main__":
    main()
