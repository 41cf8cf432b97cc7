"""The test bed the tests, the demo and the benchmarks share: a real OpenSSH
sshd with real accounts whose login shell is the installed qbackup-shell
(server), the carrier configs that point at it (carrier), the OpenSSH client
command lines (openssh), small tmpfs disks (tmpfs), a test-side client of the
wire protocol with storage snapshots (client), a TCP relay a test can cut
(netproxy), an account's processes seen from outside (processes), bounded
waiting (waiting) and a commit killed while it waits at its lock
(gated_commit). Not installed, not shipped: run from the repository root."""
