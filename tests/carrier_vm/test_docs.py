"""The carrier's README says what the code does: its exit-code table is the
protocol module's CarrierExit. (Config keys and the timeouts table:
test_settings_table.py.)"""

from __future__ import annotations

import re

from qbackup_protocol.carrier_service import CarrierExit
from tests.carrier_vm.conftest import REPO

README = (REPO / "carrier_vm" / "README.md").read_text()


def test_readme_exit_code_table_is_carrier_exit() -> None:
    section = README.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| ([^|]+) \|", section, re.MULTILINE)
    documented = {int(code): meaning.strip() for code, meaning in rows}
    assert documented == {int(code): code.meaning for code in CarrierExit}

