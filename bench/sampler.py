"""Peak memory and CPU of processes we did not start ourselves (the server side
runs under sshd as another account), sampled from /proc while they run."""

from __future__ import annotations

import os
import threading
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ProcessSampler:
    """Watch processes of UID whose command line contains MARKER; record the
    highest VmHWM (peak RSS) and the last CPU time seen for each of them."""

    def __init__(self, uid: int, marker: str, interval: float = 0.05) -> None:
        self.uid = uid
        self.marker = marker.encode()
        self.interval = interval
        self._peak_kib: dict[int, int] = {}
        self._cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProcessSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_rss_kib(self) -> int | None:
        return max(self._peak_kib.values(), default=None)

    @property
    def cpu_seconds(self) -> float | None:
        return sum(self._cpu.values()) if self._cpu else None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    self._sample(entry)

    def _sample(self, proc: Path) -> None:
        try:
            if proc.stat().st_uid != self.uid or self.marker not in (proc / "cmdline").read_bytes():
                return
            status = (proc / "status").read_text()
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return  # it exited between two reads
        pid = int(proc.name)
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                self._peak_kib[pid] = max(self._peak_kib.get(pid, 0), int(line.split()[1]))
        # utime and stime are fields 14 and 15 of /proc/PID/stat (12 and 13 after the ')').
        self._cpu[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class PeakRss:
    """Watch one process (by PID) we started; record its highest VmHWM.

    Not wait4()'s ru_maxrss: a child spawned with vfork (what subprocess
    does) inherits at exec the PARENT's peak RSS as its own, so every child
    of a big parent would report at least the parent's peak."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return  # gone (or a zombie: no VmHWM line below)
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                self.peak_kib = max(self.peak_kib, int(line.split()[1]))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()
