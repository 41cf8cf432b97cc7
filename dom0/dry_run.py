"""`qbackup backup --dry-run`: everything a backup needs, checked, nothing sent.

The job resolved (its VMs with Qubes' size estimate of each, the compression,
the carrier and the name a backup now would get), the passphrase read (the
file, or the passphrase VM asked as qubesd would ask it), the server reached
through the carrier (`info`) and the estimate held to its free space. Nothing
reaches the server, the history, the desktop or the job's hooks and ping.

Like a backup it holds the carrier's lock (it starts and stops the carrier,
which must not happen under a running backup) and writes the Qubes profile
for Info, without the passphrase (Info never reads it).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

from dom0.backup import (
    check_inputs,
    check_space,
    destination_space,
    job_destinations,
    job_profile,
    make_name,
)
from dom0.carrier import CarrierClient
from dom0.config import Job, PassphraseSource, backup_job
from dom0.errors import UsageError
from dom0.estimate import parse_estimate, vm_sizes
from dom0.locking import carrier_lock
from dom0.log import human_size, say, say_json
from dom0.profile import written_profile
from dom0.qubes import QubesAdapter
from dom0.session import Context, running_carrier
from dom0.verify import passphrase_input
from qbackup_protocol.carrier_service import DEFAULT_DESTINATION

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DryRun:
    """What a backup of a job would do now."""

    job: Job
    name: str  # the name a backup started now would get
    vms: dict[str, int | None]  # each VM and Qubes' estimate of it (None: none given)
    estimate: int | None  # Qubes' total, before compression
    available: int  # the server's bytes available to this account (the least of them)
    space: dict[str, int]  # each destination's available bytes

    def passphrase(self) -> str:
        """Return where the passphrase came from, in words."""
        if self.job.passphrase_file is not None:
            return f"file {self.job.passphrase_file}, read"
        return f"VM {self.job.passphrase_vm}, answered"

    def lines(self) -> list[str]:
        """Return the dry run as a person reads it."""
        sizes = ", ".join(vm if size is None else f"{vm} {human_size(size)}"
                          for vm, size in self.vms.items())
        total = "?" if self.estimate is None else human_size(self.estimate)
        return [f"dry run of {self.job.name or 'the command line'}: nothing sent, no history"
                " record",
                f"  VMs: {sizes} (total {total} before compression)",
                f"  compression: {str(self.job.compression).lower()}",
                f"  destination: {self.job.carrier}, as {self.name}",
                f"  server: answers through {self.job.carrier}, " + (
                    f"{human_size(self.available)} available"
                    if list(self.space) == [DEFAULT_DESTINATION] else ", ".join(
                        f"{destination} {human_size(available)} available"
                        for destination, available in self.space.items())),
                f"  passphrase: {self.passphrase()}"]

    def to_json(self) -> dict[str, object]:
        return {"job": self.job.name, "dry_run": True, "carrier": self.job.carrier,
                "name": self.name, "compression": self.job.compression,
                "vms": [{"name": vm, "size": size} for vm, size in self.vms.items()],
                "estimate": self.estimate, "available": self.available,
                "destinations": self.space,
                "passphrase_file": None if self.job.passphrase_file is None
                else str(self.job.passphrase_file), "passphrase_vm": self.job.passphrase_vm}


def dry_run(app: QubesAdapter, job: Job, context: Context) -> DryRun:
    """Given a resolved job, check what its backup needs, send nothing, and
    return what the backup would do; raise what the backup would raise
    before sending anything (VMNotFound, PassphraseError, NoSpaceError, ...)."""
    _, vms = check_inputs(app, job)  # the passphrase file read, every VM there
    with carrier_lock(context.lock_dir, job.carrier):
        with running_carrier(app, job.carrier, job.keep_carrier):
            if job.passphrase_vm is not None:
                passphrase_input(app, job.carrier, PassphraseSource(vm=job.passphrase_vm))
            client = CarrierClient(app, job.carrier, job.answer_timeout)
            space = destination_space(app, job, job_destinations(client, job))
            available = min(space.values())
            name = make_name(job.prefix)
            with written_profile(app.profile_dir, job_profile(job, name, None)) as profile:
                summary = app.backup_info(profile)
    estimate = parse_estimate(summary)
    check_space(estimate, available)
    sizes = vm_sizes(summary)
    return DryRun(job, name, {vm: sizes.get(vm) for vm in vms}, estimate, available, space)


def run(args: argparse.Namespace, context: Context) -> int:
    """`qbackup backup --dry-run`: given its arguments, check the job they
    describe and print what its backup would do; return 0 or raise."""
    if args.all:
        raise UsageError("--dry-run checks one job: give --job NAME (qbackup config check"
                         " checks them all)")
    job = backup_job(args, context.config)  # its problems first: they need no Qubes
    result = dry_run(context.get_app(), job, context)
    logger.info("dry run of %s: ok, nothing sent", args.job or "the command line")
    if context.json:
        say_json(result.to_json())
    elif not context.quiet:
        for line in result.lines():
            say(line)
    return 0
