"""What dom0 shows (dom0/log.py): absurd times shown as '?'. (Its text passes
the one sanitiser, tested in tests/qbackup_protocol/test_text.py.)"""

from __future__ import annotations

import pytest

from dom0.log import show_time


@pytest.mark.parametrize(("epoch", "shown"), [
    (None, "-"), (0, "1970-01-01 00:00:00Z"), (2**63 - 1, "?"), (-1e30, "?")])
def test_show_time_survives_absurd_mtimes(epoch: float | None, shown: str) -> None:
    assert show_time(epoch) == shown
