"""`qbackup check NAME`: the server re-hashes one stored backup.

Two separate questions, two separate answers: does the stored backup still
match the digest record the server wrote at commit time (the server's
re-hash: a mismatch is a CORRUPTED backup, exit 13), and does that record
match what the server confirmed to dom0 at backup time (dom0's history: a
difference is tampering, exit 4)?
"""

from __future__ import annotations

import argparse
import logging

from dom0 import history
from dom0.carrier import CarrierClient, check_name
from dom0.config import carrier_and_passphrase
from dom0.errors import Corrupted, VerificationError
from dom0.log import say, say_json
from dom0.session import Context, failure_as_json, running_carrier

logger = logging.getLogger(__name__)


def run(args: argparse.Namespace, context: Context) -> int:
    """Given `check` arguments, have the server re-hash the named backup and
    compare it with dom0's history; print the verdict (or JSON); return 0 or
    raise Corrupted, VerificationError or NoSuchBackup."""
    with failure_as_json(context, args.name):
        target = carrier_and_passphrase(args, context.config)
        carrier = target.carrier
        name = check_name(args.name)
        app = context.get_app()
        with running_carrier(app, carrier, keep=False):
            result = CarrierClient(app, carrier, target.answer_timeout,
                                   target.destination).check(name)
        record = result.record
        if not context.json:
            verdict = "ok" if result.ok else "CORRUPTED"
            say(f"{record.name}  {record.size}  {record.sha256 or '-'}  {verdict}")
        if not result.ok:
            raise Corrupted(f"check of {name}: the stored backup is CORRUPTED: it differs from"
                            " its digest record on the server")
        committed = [run for run in history.committed_runs(history.read_runs(context.history))
                     if run.name == name]
        if any(run.sha256 != record.sha256 or run.size != record.size for run in committed):
            raise VerificationError(
                f"{name} differs from what the server confirmed at backup time: tampering?")
    if context.json:
        # matches_history: None when dom0 has no record of this backup.
        say_json({"backup": name, "size": record.size, "sha256": record.sha256,
                  "matches_history": True if committed else None})
    logger.info("server check of %s: ok", name)
    return 0
