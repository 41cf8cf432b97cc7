"""The test bed the tests, the demo and the benchmarks share: a real OpenSSH
sshd with real accounts whose login shell is the installed qbackup-shell
(server), the carrier configs that point at it (carrier), the OpenSSH client
command lines (openssh) and small tmpfs disks (tmpfs). Not installed, not
shipped: run from the repository root."""
