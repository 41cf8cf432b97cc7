"""What two parts of qbackup must agree on, one module per boundary.

wire: the carrier <-> server-shell protocol, the only module the login
shell imports. names: backup names and retention (dom0, qbackup-server).
carrier_service: the carrier's exit statuses and reports to dom0.
Nothing is re-exported here, so importing wire loads wire alone.

__version__ is the one version of every part and of its package: pyproject.toml,
the Makefile's `packages`, the man pages and each program's --version read it.
"""

__version__ = "0.1.0"
