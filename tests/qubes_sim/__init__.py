"""A simulated Qubes dom0 for qbackup's tests (the only simulated boundary)."""

from tests.qubes_sim.errors import SimulationError
from tests.qubes_sim.simulator import Hooks, SimulatedQubes, SimVM, simulated_dom0

__all__ = ["Hooks", "SimVM", "SimulatedQubes", "SimulationError", "simulated_dom0"]
