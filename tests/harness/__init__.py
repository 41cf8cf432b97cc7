"""What the tests import of the shared test bed (testbed/ at the repository
root, which bench/ uses too): tests.harness.server, tests.harness.carrier."""
