"""Going away: the tests import the test bed from testbed/ itself. Left only
for the one import of tests/server_shell/test_docs.py (REPO); remove this
directory once that import names testbed.server."""
