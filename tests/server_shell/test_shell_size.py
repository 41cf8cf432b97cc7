"""Everything sshd can reach is auditable in one sitting: the modules the
login shell loads hold at most MAX_LINES_OF_CODE lines of code together (how
they are found and counted: shell_size.py), and the limit is met by removing
code, never by packing it. Of this project, the shell loads its own modules
and the wire protocol, never the admin tool, retention or the carrier's
contract with dom0."""

from __future__ import annotations

from tests.server_shell.shell_size import lines_of_code, loaded_modules, measure

# What it measures now: the target is 1,000; it must not grow. (The shell's
# --help and --version are the only lines added since the measure changed.)
MAX_LINES_OF_CODE = 1141


def test_what_sshd_can_reach_stays_within_its_lines_of_code() -> None:
    sizes = measure()
    assert sum(sizes.values()) <= MAX_LINES_OF_CODE, sizes


def test_the_login_shell_loads_its_own_modules_and_the_wire_protocol_only() -> None:
    # The admin tool (run as root), retention (names) and the carrier's
    # contract with dom0 must stay out of reach of a client's bytes.
    assert set(loaded_modules()) == {
        "qbackup_protocol", "qbackup_protocol.wire", "server_shell", "server_shell.config",
        "server_shell.main", "server_shell.reading", "server_shell.storage", "server_shell.upload",
    }


def test_only_lines_holding_code_count() -> None:
    source = '''"""A module docstring,
over two lines."""

# A comment alone.
import os  # a comment after code


def call(
    argument: int,
) -> str:
    """A docstring."""
    text = """a string
that is not a docstring"""
    return text
'''
    # import, the three lines of the def, the two of the string, the return.
    assert lines_of_code(source) == 7
