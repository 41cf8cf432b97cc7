"""qbackup-carrier: moves encrypted Qubes backups between dom0 and the SSH server."""

__version__ = "0.1.0"  # the same as pyproject.toml's (a test compares them)
