"""`qbackup config check`: everything a backup needs, checked, nothing changed.

For each job of the job file: its settings (every problem, with file, line
and key), its passphrase source (the file safe, the passphrase VM present),
its VMs and its carrier; then, through the carrier, that the server answers
and how much space it has. The only thing it touches is the carrier VM, which
it starts if needed and shuts down again afterwards.
"""

from __future__ import annotations

import argparse
import logging

from dom0.backup import check_inputs, destination_space, job_destinations
from dom0.carrier import CarrierClient
from dom0.config import all_jobs, open_config, require_job
from dom0.errors import ConfigError, QbackupError, exit_code_for
from dom0.log import human_size, say
from dom0.session import Context, running_carrier
from qbackup_protocol.carrier_service import DEFAULT_DESTINATION

logger = logging.getLogger(__name__)


def run(args: argparse.Namespace, context: Context) -> int:
    """Given `config check` arguments, check every job (or --job NAME); print
    one verdict per job; return 0 or the exit code of the first job that fails."""
    job_file = open_config(context.config)
    if args.job:
        require_job(job_file, args.job)
    found = all_jobs(job_file)
    jobs = found.valid
    broken = found.broken
    names = [args.job] if args.job else sorted({*jobs, *broken})
    first_failure = 0
    for name in names:
        if name in broken:
            for problem in broken[name]:
                logger.error("%s", problem)
            say(f"{name}: {len(broken[name])} problem(s) in the job file (see above)")
            first_failure = first_failure or ConfigError.exit_code
            continue
        job = jobs[name]
        try:
            app = context.get_app()
            _, vms = check_inputs(app, job)
            with running_carrier(app, job.carrier, keep=False):
                client = CarrierClient(app, job.carrier, job.answer_timeout)
                space = destination_space(app, job, job_destinations(client, job))
        except QbackupError as error:
            logger.error("%s: %s", name, error)
            say(f"{name}: FAILED: {error}")
            first_failure = first_failure or exit_code_for(error)
            continue
        if list(space) == [DEFAULT_DESTINATION]:
            reached = f"the server, {human_size(space[DEFAULT_DESTINATION])} available"
        else:
            reached = ", ".join(f"{destination} ({human_size(available)} available)"
                                for destination, available in space.items())
        say(f"{name}: ok: {len(vms)} VM(s), carrier {job.carrier} reaches {reached}")
    return first_failure
