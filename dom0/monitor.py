"""Telling people and monitors how a backup went: the journal, a desktop
notification, the job's hook commands and a Healthchecks-style ping.

Every outcome of a backup run, a failure found before the backup starts
included, goes through one `Monitor`, so no failure can be silent. Nothing a
monitor does can change the outcome: a hook that fails or hangs is logged
and the run goes on.

dom0 has no network, so the ping cannot come from dom0. It is sent by a
networked VM: `hooks.ping_vm`, by default the job's carrier, which is
networked anyway and running during the backup. dom0 runs
`qvm-run --pass-io --no-autostart --no-gui VM -- curl ... URL`: the URL travels
as one argument (qvm-run hands arguments over with qubes.VMExec, no shell in
the VM), and the VM is never started for a ping (a ping must not leave a
carrier running that qbackup would otherwise shut down). So the failure ping
of a run that failed before its carrier started is only sent if the ping VM
runs; a Healthchecks check still raises the alarm when the success ping does
not come.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from dom0 import processes
from dom0.config import Hooks
from qbackup_protocol.text import clean_text

logger = logging.getLogger(__name__)
QVM_RUN = "qvm-run"
HOOK_TIMEOUT = 120.0
PING_TIMEOUT = 60.0
HOOK_OUTPUT_KEPT = 4096  # the end of a failing hook's output, for the log
# Healthchecks.io's convention: URL (success), URL/start, URL/fail.
PING_SUFFIX = {"on_start": "/start", "on_success": "", "on_failure": "/fail"}


def ping_argv(vm: str, url: str) -> list[str]:
    """Given a networked VM and a URL, return the dom0 command that has the VM
    fetch it (no shell in dom0 or in the VM; bounded time; --globoff: the URL
    as written, never a curl glob like {a,b} or [1-9] fetching several)."""
    return [QVM_RUN, "--pass-io", "--no-autostart", "--no-gui", vm, "--",
            "curl", "-fsS", "-m", "20", "--retry", "2", "-o", "/dev/null", "--globoff", url]


@dataclass
class Monitor:
    """One job's run as its watchers see it."""

    job: str
    carrier: str | None
    hooks: Hooks

    def _event(self, event: str, environment: dict[str, str]) -> None:
        command = self.hooks.commands.get(event)
        if command:
            env = {**os.environ, "QBACKUP_JOB": self.job, "QBACKUP_EVENT": event, **environment}
            try:
                result = processes.run(command, timeout=HOOK_TIMEOUT, env=env,
                                     max_capture=HOOK_OUTPUT_KEPT)
            except (OSError, processes.TimeoutExpired) as error:
                logger.warning("hook %s of %s could not run: %s", event, self.job, error)
            else:
                if result.returncode != 0:
                    logger.warning("hook %s of %s exited %d: %s", event, self.job,
                                   result.returncode, clean_text(result.stdout or b""))
        vm = self.hooks.ping_vm or self.carrier
        if self.hooks.ping_url and vm:
            url = self.hooks.ping_url.rstrip("/") + PING_SUFFIX[event]
            try:
                # The ping VM is networked and less trusted: its output is
                # never read into dom0.
                result = processes.run(ping_argv(vm, url), discard=True, timeout=PING_TIMEOUT)
            except (OSError, processes.TimeoutExpired) as error:
                logger.warning("ping %s through %s failed: %s", event, vm, error)
            else:
                if result.returncode != 0:
                    logger.warning("ping %s through %s failed (exit %d)", event, vm,
                                   result.returncode)

    def started(self, detail: str) -> None:
        """Given what the run will do, report that it started."""
        logger.info("backup %s started: %s", self.job, detail)
        processes.notify("qbackup started", f"{self.job}: {detail}")
        self._event("on_start", {})

    def succeeded(self, name: str, summary: str) -> None:
        """Given the backup's NAME and a one-line summary, report success."""
        logger.info("backup %s outcome: success: %s", self.job, summary)
        processes.notify("qbackup finished", f"{name}: {summary}")
        self._event("on_success", {"QBACKUP_NAME": name})

    def failed(self, message: str, code: int) -> None:
        """Given the failure's one-line MESSAGE and the exit CODE, report it:
        journal, critical notification, on_failure hook, fail ping."""
        logger.error("backup %s outcome: FAILED (exit %d): %s", self.job, code, message)
        processes.notify("qbackup FAILED", f"{self.job}: {message}", critical=True)
        self._event("on_failure", {"QBACKUP_ERROR": clean_text(message),
                                   "QBACKUP_EXIT": str(code)})
