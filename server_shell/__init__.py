"""qbackup-shell, the storage account's login shell, and qbackup-server, its admin's tool."""

__version__ = "0.1.0"  # the same as pyproject.toml's (a test compares them)
