"""The test bed the tests, the demo and the benchmarks share: a real OpenSSH
sshd with real accounts whose login shell is the installed qbackup-shell
(server), the carrier configs that point at it (carrier), the OpenSSH client
command lines (openssh), small tmpfs disks (tmpfs), a test-side client of the
wire protocol with storage snapshots (client) and a TCP relay a test can cut
(netproxy). Not installed, not shipped: run from the repository root."""
