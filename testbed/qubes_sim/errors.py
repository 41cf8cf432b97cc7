"""The simulator's own failure: dom0 used Qubes in a way the simulation does not model."""


class SimulationError(AssertionError):
    """dom0 used the simulated Qubes in a way the simulation does not model (a
    test or qbackup bug, never a Qubes behaviour)."""
