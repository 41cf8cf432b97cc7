"""qbackup in dom0: drives Qubes' backup engine and streams into the carrier VM."""
