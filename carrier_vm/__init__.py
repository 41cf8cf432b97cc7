"""qbackup-carrier: moves encrypted Qubes backups between dom0 and the SSH server."""
