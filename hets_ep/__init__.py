"""hets-ep: Equilibrium Propagation with heterogeneous per-neuron time steps."""

__version__ = "0.4.0"
