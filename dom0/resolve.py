"""Turning parsed arguments into a job or a carrier: flags, then the job file,
then the environment (QBKP_DEST_VM, QBKP_PASS_FILE) of the original tool."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from dom0 import config
from dom0.arguments import ENV_CARRIER, ENV_PASSFILE
from dom0.errors import ConfigError, UsageError
from dom0.verify import PassphraseSource


def job_from_args(args: argparse.Namespace) -> config.Job:
    """Given backup arguments, return the job they describe: a config job with
    flags applied on top, or one built from flags and the environment; raise
    ConfigError/UsageError naming every problem."""
    compression: bool | str | None = None
    if args.compression is not None:
        lowered = args.compression.lower()
        compression = {"true": True, "false": False}.get(lowered, lowered)
    flags = dict(
        prefix=args.prefix, carrier=args.carrier, passphrase_file=args.passphrase_file,
        passphrase_vm=args.passphrase_vm, vms=args.vms or None, exclude=args.exclude,
        compression=compression, keep_carrier=args.keep_carrier, retries=args.retries,
        retry_delay=args.retry_delay, verify=args.verify)
    if args.job:
        base = config.find_job(args.config, args.job)
        if args.passphrase_vm or args.passphrase_file:
            # A passphrase flag replaces the job's, whichever kind it was.
            base = dataclasses.replace(base, passphrase_file=None, passphrase_vm=None)
        return check_job(config.override(base, **flags))
    env_file = os.environ.get(ENV_PASSFILE)
    if not args.passphrase_vm and not args.passphrase_file and env_file:
        flags["passphrase_file"] = Path(env_file)
    flags["carrier"] = args.carrier or os.environ.get(ENV_CARRIER)
    return check_job(config.override(config.Job(name="", carrier="", prefix=""), **flags))


CLI_WORDING = (
    ("at 'jobs.cli.carrier': required, expected the carrier VM name",
     f"give the carrier VM with -t VM or ${ENV_CARRIER}"),
    ("at 'jobs.cli': give exactly one of passphrase_file, passphrase_vm",
     f"give exactly one of -p FILE (or ${ENV_PASSFILE}) and --passphrase-vm VM"),
    ("at 'jobs.cli.prefix': ", "-f PREFIX: "),
    ("at 'jobs.cli.", "option '"),
)


def cli_problem(problem: str) -> str:
    """Given a job validation problem of a command-line job, return it worded
    with the command's flags."""
    for old, new in CLI_WORDING:
        problem = problem.replace(old, new)
    return problem


def check_job(job: config.Job) -> config.Job:
    """Given a merged job, return it; raise ConfigError (a config job) or
    UsageError (command line only) listing what is wrong."""
    problems: list[str] = []
    raw = {key: value for key, value in vars(job).items() if key != "name"}
    raw["passphrase_file"] = str(job.passphrase_file) if job.passphrase_file else None
    raw = {key: value for key, value in raw.items() if value not in (None, "")}
    config.validate_job(job.name or "cli", raw, problems)
    if problems and not job.name:
        raise UsageError("; ".join(cli_problem(problem) for problem in problems))
    if problems:
        raise ConfigError(problems)
    return job


def resolve_carrier(args: argparse.Namespace) -> tuple[str, PassphraseSource]:
    """Given list/check/verify/restore arguments, return (carrier VM, passphrase
    source) from flags, then the job, then the environment."""
    job = config.find_job(args.config, args.job) if args.job else None
    carrier = args.carrier or (job.carrier if job else None) or os.environ.get(ENV_CARRIER)
    if not carrier or not config.is_vm_name(carrier):
        raise UsageError(f"give the carrier VM with -t VM, --job NAME or ${ENV_CARRIER}")
    passfile = getattr(args, "passphrase_file", None)
    passvm = getattr(args, "passphrase_vm", None)
    if passvm is not None and not config.is_vm_name(passvm):
        raise UsageError("--passphrase-vm: not a VM name")
    if passfile is None and passvm is None and job is not None:
        passfile, passvm = job.passphrase_file, job.passphrase_vm
    if passfile is None and passvm is None and os.environ.get(ENV_PASSFILE):
        passfile = Path(os.environ[ENV_PASSFILE])
    return carrier, PassphraseSource(file=passfile, vm=passvm)


def need_passphrase(source: PassphraseSource) -> PassphraseSource:
    """Given a passphrase source, return it; raise UsageError if it is empty or double."""
    if (source.file is None) == (source.vm is None):
        raise UsageError(f"give exactly one of -p FILE (or ${ENV_PASSFILE}), --passphrase-vm VM"
                         " or --job NAME")
    return source
