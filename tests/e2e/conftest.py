"""The end-to-end tests use dom0's fixture: simulated Qubes wired to the real
carrier, sshd and shell (tests/dom0/conftest.py)."""

from tests.dom0.conftest import dom0  # noqa: F401  (a fixture, used by name)
