"""qbackup-shell, the storage account's login shell, and qbackup-server, its admin's tool."""
