"""``put`` and ``commit`` on each destination at once, one DestinationOutcome
each: the receipt, or the CarrierExit and reason it failed with.

A put reads stdin once into one Stream (upload.py) and runs one task per
destination, each with its own connection, acks and resume state; a
destination that fails, or that the run drops, leaves the Stream and the
others go on. What each destination's put verified is kept in this VM
(transfers.py), so that ``commit NAME`` commits where the put staged.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from carrier_vm.commit import commit_backup
from carrier_vm.config import CarrierConfig
from carrier_vm.errors import CarrierError, Dropped
from carrier_vm.ssh import SETTLE_RETRY, one_line, open_link
from carrier_vm.transfers import forget_receipt, load_receipt, save_receipt, save_stats
from carrier_vm.upload import Outbox, Stream, open_stream, put_to
from qbackup_protocol.carrier_service import MAX_REASON, CarrierExit, DestinationOutcome
from qbackup_protocol.wire import BackupRecord

logger = logging.getLogger(__name__)

Stopping = Callable[[], bool]


@dataclass(frozen=True)
class Ended:
    """How one destination ended: its OUTCOME for dom0 and, if it failed,
    the whole error MESSAGE for stderr (the outcome's reason is shortened)."""

    outcome: DestinationOutcome
    message: str = ""


def succeeded(destination: str, record: BackupRecord) -> Ended:
    return Ended(DestinationOutcome(destination, record, CarrierExit.OK))


def failed(destination: str, error: CarrierError) -> Ended:
    """Given a destination and the error its part of the run ended with,
    return its failed outcome (the reason one short printable line)."""
    reason = one_line(str(error), MAX_REASON - 3) or type(error).__name__
    return Ended(DestinationOutcome(destination, None, error.exit_code, reason), str(error))


async def put_everywhere(name: str, then_commit: bool, configs: tuple[CarrierConfig, ...],
                         fd: int, stopping: Stopping) -> tuple[Ended, ...]:
    """Given a valid NAME, whether to commit right after, the destinations'
    CONFIGS, the input FD and whether a signal stopped the run, put FD to
    every destination at once; return their outcomes in the order of CONFIGS."""
    reader = open_stream(fd, configs[0])
    stream = Stream(reader)
    outboxes = [Outbox(stream, config.destination, config.progress_timeout)
                for config in configs]
    tasks: dict[str, asyncio.Task[Ended]] = {}
    stream.on_drop = lambda outbox: cancel_until_done(tasks[outbox.destination])
    try:
        for config, outbox in zip(configs, outboxes, strict=True):
            tasks[config.destination] = asyncio.ensure_future(
                put_one(name, then_commit, config, outbox, stopping))
        return tuple(await asyncio.gather(*tasks.values()))
    finally:
        reader.stop()
        logger.info("put %s: at most %d of %d buffers of %d bytes held at once", name,
                    stream.peak, reader.max_frames, reader.frame_size)


async def put_one(name: str, then_commit: bool, config: CarrierConfig, outbox: Outbox,
                  stopping: Stopping) -> Ended:
    """Given NAME, whether to commit right after, one destination's config
    and outbox, put the stream there; return its outcome (leaving the
    Stream however it ends)."""
    destination = config.destination
    forget_receipt(os.environ, name, destination)
    try:
        async with open_link(config, stopping, patient=True) as link:
            upload = await put_to(link, name, outbox, config,
                                  lambda stats: save_stats(os.environ, stats))
            outbox.stream.leave(outbox)
            record = upload.record
            save_receipt(os.environ, destination, record)
            if then_commit:
                record = await commit_backup(link, name, config, record)
        return succeeded(destination, record)
    except asyncio.CancelledError:
        if not outbox.dropped:
            raise
        return failed(destination, Dropped(outbox.dropped))
    except CarrierError as error:
        return failed(destination, error)
    finally:
        outbox.stream.leave(outbox)


async def commit_everywhere(name: str, configs: tuple[CarrierConfig, ...],
                            stopping: Stopping) -> tuple[Ended, ...]:
    """Given a valid NAME and the destinations' CONFIGS, commit NAME on each
    where the last put of NAME from this VM staged it (on every one when
    this VM kept no receipt of NAME); return their outcomes in order."""
    sent = {config.destination: load_receipt(os.environ, name, config.destination)
            for config in configs}
    staged = [config for config in configs if sent[config.destination] is not None]
    chosen = staged or list(configs)
    return tuple(await asyncio.gather(*(
        commit_one(name, config, sent[config.destination], stopping) for config in chosen)))


async def commit_one(name: str, config: CarrierConfig, sent: BackupRecord | None,
                     stopping: Stopping) -> Ended:
    """Given NAME, one destination's config and the receipt its put verified
    (if kept), commit NAME there; return its outcome."""
    try:
        async with open_link(config, stopping, patient=True) as link:
            record = await commit_backup(link, name, config, sent)
        return succeeded(config.destination, record)
    except CarrierError as error:
        return failed(config.destination, error)


def cancel_until_done(task: asyncio.Task[Ended]) -> None:
    """Given a destination's task, cancel it, again until it ends (Python
    3.11's wait_for can swallow a cancel)."""
    if not task.done():
        task.cancel()
        asyncio.get_running_loop().call_later(SETTLE_RETRY, cancel_until_done, task)

