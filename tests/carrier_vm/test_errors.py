"""The server shell's exit statuses as the carrier's errors (carrier_vm/errors.py):
each status has its meaning, and the carrier's exit code follows from it."""

from __future__ import annotations

import pytest

from carrier_vm.errors import (
    SHELL_STATUS_ERRORS,
    AlreadyExists,
    DataError,
    NoSuchBackup,
    ServerRefused,
    TemporaryFailure,
    error_for_shell_status,
)
from qbackup_protocol.carrier_service import CarrierExit
from qbackup_protocol.wire import ShellExit


@pytest.mark.parametrize(
    ("status", "kind", "exit_code"),
    [
        (None, TemporaryFailure, CarrierExit.TEMPORARY),
        (ShellExit.USAGE, ServerRefused, CarrierExit.REFUSED),
        (ShellExit.DATA, DataError, CarrierExit.DATA),
        (ShellExit.NO_SUCH_BACKUP, NoSuchBackup, CarrierExit.NO_SUCH_BACKUP),
        (ShellExit.UNAVAILABLE, ServerRefused, CarrierExit.REFUSED),
        (ShellExit.EXISTS, AlreadyExists, CarrierExit.EXISTS),
        (ShellExit.IO, ServerRefused, CarrierExit.REFUSED),
        # The server's "not allowed" and "misconfigured" are refusals, never
        # the carrier's own HOST_KEY/CONFIG codes (same numbers, other meaning).
        (ShellExit.NO_PERMISSION, ServerRefused, CarrierExit.REFUSED),
        (ShellExit.CONFIG, ServerRefused, CarrierExit.REFUSED),
        (ShellExit.SOFTWARE, ServerRefused, CarrierExit.REFUSED),
        (1, ServerRefused, CarrierExit.REFUSED),
    ],
)
def test_shell_exit_statuses_map_to_carrier_errors(
    status: int | None, kind: type, exit_code: CarrierExit
) -> None:
    error = error_for_shell_status(status)
    assert type(error) is kind and error.exit_code is exit_code


def test_every_shell_status_has_a_mapping() -> None:
    # A new ShellExit member must be given its meaning here, not fall through.
    assert set(SHELL_STATUS_ERRORS) == set(ShellExit) - {ShellExit.OK}
