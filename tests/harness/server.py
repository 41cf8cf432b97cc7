"""The test bed's server, where the tests have always imported it from: every
public name of testbed/server.py (which bench/ shares) is here too."""

from testbed.server import *  # noqa: F403
from testbed.server import REPO  # noqa: F401  (named: the tests' usual import)
