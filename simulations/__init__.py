"""Deterministic discrete-event simulation of the real gossip core, for thousands of nodes.

Run `python -m simulations SCENARIO --nodes N --seed S` from the repository
root; see simulations/README.md. No trio here: one heap and virtual time.
Must not import trio, sockets or any meshnode part but `meshnode.gossip`
(the cores it drives); tests/test_architecture.py checks the imports.
"""

from simulations.network import Network, NetworkConfig, Partition
from simulations.report import Curve
from simulations.scenarios import SCENARIOS, Params, Result
from simulations.sim import SimNode, Simulator

__all__ = [
    "SCENARIOS",
    "Curve",
    "Network",
    "NetworkConfig",
    "Params",
    "Partition",
    "Result",
    "SimNode",
    "Simulator",
]
