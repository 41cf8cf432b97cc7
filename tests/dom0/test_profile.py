"""Qubes backup profiles (dom0/profile.py): 0600 from the first byte, deleted
even when Execute fails."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dom0.profile import ProfileSpec, written_profile


def test_profile_is_0600_from_the_start_and_deleted_even_on_error(tmp_path: Path) -> None:
    spec = ProfileSpec(carrier="sys-backup", name="a-20261122T235959Z", vms=None, exclude=[],
                       compression=True, passphrase_text="secret")
    old_umask = os.umask(0)
    try:
        with pytest.raises(RuntimeError), written_profile(tmp_path, spec) as profile:
            path = tmp_path / f"{profile}.conf"
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert "passphrase_text: secret" in path.read_text()
            assert "destination_path: qbackup-carrier put a-20261122T235959Z" in path.read_text()
            raise RuntimeError("Execute failed")
    finally:
        os.umask(old_umask)
    assert list(tmp_path.iterdir()) == []
