"""Everything sshd can reach is auditable in one sitting -- at most 8
modules (the protocol package's `__init__` is one: a docstring), 1,500
lines, 900 of them code (how it counts: shell_size.py). Of the protocol
package, the login shell imports the wire module only."""

from __future__ import annotations

import subprocess
import sys

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


def test_the_login_shell_loads_exactly_the_modules_the_count_reaches() -> None:
    # What Python really imports for the launcher's `from server_shell.main
    # import main` (-I, as the launcher runs): the count's files and no other
    # qbackup module -- neither retention (names) nor the carrier's contract.
    loaded = subprocess.run(
        [sys.executable, "-I", "-c",
         f"import sys; sys.path.insert(0, {str(REPO)!r}); import server_shell.main; "
         "print(' '.join(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True, cwd="/",
    ).stdout.split()
    ours = {name for name in loaded if name.split(".")[0] in ("qbackup_protocol", "server_shell")}
    counted = {".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
               for path in reachable()}
    assert ours == counted
    assert "qbackup_protocol.names" not in ours
    assert "qbackup_protocol.carrier_service" not in ours
