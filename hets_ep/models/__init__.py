"""Energy-based networks: the primitive function Φ for MLPs and ConvNets."""

from hets_ep.models.activations import ACTIVATIONS, Activation
from hets_ep.models.network import Network, build_network
from hets_ep.models.modules import MLP, ConvNet

__all__ = ["ACTIVATIONS", "Activation", "ConvNet", "MLP", "Network", "build_network"]
