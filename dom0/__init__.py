"""qbackup in dom0: drives Qubes' backup engine and streams into the carrier VM."""

__version__ = "0.1.0"  # the same as pyproject.toml's (a test compares them)
