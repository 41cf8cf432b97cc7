"""The passphrase file (dom0/passphrase.py): its first line, without the line
end; anything but a regular file refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dom0.errors import PassphraseError
from dom0.passphrase import read_passphrase


def test_passphrase_first_line_without_line_end(tmp_path: Path) -> None:
    path = tmp_path / "p"
    path.write_text("secret words\r\nsecond line\n")
    path.chmod(0o600)
    assert read_passphrase(path) == "secret words"


def test_passphrase_fifo_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fifo"
    os.mkfifo(path, 0o600)
    with pytest.raises(PassphraseError, match="not a regular file"):
        read_passphrase(path)
