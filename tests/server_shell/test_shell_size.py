"""Issue 11: everything sshd can reach is auditable in one sitting -- at most
8 modules (7 until issue 18 made the protocol a package, whose `__init__` is
a docstring), 1,500 lines, 900 of them code (how it counts: shell_size.py)."""

from __future__ import annotations

from tests.server_shell.shell_size import PROTOCOL, REPO, measure, reachable


def test_the_login_shell_stays_within_its_size_limits() -> None:
    rows, lines, code, _ = measure()
    assert len(rows) <= 8, [str(path.relative_to(REPO)) for path, *_ in rows]
    assert lines <= 1500, lines
    assert code <= 900, code


def test_the_count_reaches_every_module_the_shell_imports() -> None:
    names = {str(path.relative_to(REPO)) for path in reachable()}
    assert names == {
        "qbackup_protocol/__init__.py", "qbackup_protocol/wire.py", "server_shell/__init__.py",
        "server_shell/config.py", "server_shell/main.py", "server_shell/reading.py",
        "server_shell/storage.py", "server_shell/upload.py",
    }
    # The admin tool is NOT reachable from the login shell.
    assert REPO / "server_shell/admin.py" not in reachable()
    assert PROTOCOL / "wire.py" in reachable()

