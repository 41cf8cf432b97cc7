"""What two parts of qbackup must agree on, one module per boundary.

wire: the carrier <-> server-shell protocol, the only module the login
shell imports. names: backup names and retention (dom0, qbackup-server).
carrier_service: the carrier's exit statuses and reports to dom0.
Nothing is re-exported here, so importing wire loads wire alone.
"""
