"""`qbackup list [PREFIX]`: the backups the server stores, through the carrier."""

from __future__ import annotations

import argparse
import logging

from dom0.carrier import CarrierClient, check_name
from dom0.config import carrier_and_passphrase
from dom0.log import say, say_json, show_time
from dom0.session import Context, running_carrier

logger = logging.getLogger(__name__)


def run(args: argparse.Namespace, context: Context) -> int:
    """Given `list` arguments, print every stored backup under the prefix
    (name, size, stored time, digest); return 0."""
    target = carrier_and_passphrase(args, context.config)
    carrier = target.carrier
    prefix = args.prefix
    if prefix:
        # A prefix obeys the name rules: it reaches the carrier's stdin.
        check_name(prefix.rstrip("/"))
    app = context.get_app()
    with running_carrier(app, carrier, keep=False):
        listing = CarrierClient(app, carrier, target.answer_timeout,
                                target.destination).listing(prefix)
    if context.json:
        say_json({"backups": [record.to_reply() for record in listing.records],
                        "truncated": listing.truncated})
    for record in [] if context.json else listing.records:
        say(f"{record.name}  {record.size}  {show_time(record.mtime)}  {record.sha256 or '-'}")
    if listing.truncated:
        logger.warning("the server cut the listing short: give a longer prefix")
    logger.info("listed %d backup(s) via %s", len(listing.records), carrier)
    return 0
