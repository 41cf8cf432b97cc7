"""A simulated Qubes dom0 for qbackup's tests (the only simulated boundary)."""

from testbed.qubes_sim.errors import SimulationError
from testbed.qubes_sim.simulator import Interventions, SimulatedQubes, SimVM, simulated_dom0

__all__ = ["Interventions", "SimVM", "SimulatedQubes", "SimulationError", "simulated_dom0"]
