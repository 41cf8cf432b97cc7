"""`make bench`: throughput and memory of qbackup's streaming path against plain OpenSSH."""
