"""The valid values of every choice a run makes, in one JAX-free module at the bottom of the
layers: the schema (:mod:`hets_ep.config`) checks against them without loading JAX, and the modules
that implement each choice import their names from here (``hets-ep report`` never loads JAX)."""

from __future__ import annotations

# hets_ep.dynamics
INTEGRATORS = ("euler", "exact")
UPDATE_ORDERS = ("sync", "async")
NOISE_MODES = ("step", "sde")
DIAGNOSTIC_WINDOW = 10          # the last steps whose sign flips the oscillation count covers
BACKENDS = ("scan", "fused", "auto")   # hets_ep.fused
# hets_ep.ep
EP_ESTIMATORS = ("one_sided", "negative", "random_sign", "symmetric", "holomorphic")
ESTIMATORS = (*EP_ESTIMATORS, "bptt")
HOLOMORPHIC = ("holomorphic",)  # estimators that nudge with a complex β
# hets_ep.models
ARCHITECTURES = ("mlp", "convnet")
LOSSES = ("mse", "ce")
DYNAMICS = ("leaky", "energy")
POOLS = ("max", "avg")
ACTIVATIONS = ("hard_sigmoid", "steep_sigmoid", "tanh")
HOLOMORPHIC_ACTIVATIONS = ("steep_sigmoid", "tanh")   # complex-differentiable: holomorphic EP can use them
# hets_ep.optim
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine", "step")
# hets_ep.timeconstants
FAMILIES = ("uniform", "normal", "lognormal", "gamma")
DISTRIBUTIONS = ("scalar", *FAMILIES, "layerwise")
SAMPLE_MODES = ("dt", "tau")
MATCHES = ("mean", "geomean", "tau", "none")
DT_PER = ("unit", "channel")
REDRAWS = ("none", "batch")
# hets_ep.data
NORMALIZATIONS = ("unit", "standard", "none")


def n_state_layers(arch: str, hidden, channels, loss: str) -> int:
    """How many state layers a network has: one per hidden (or conv) layer, plus the output
    layer unless the loss reads out through a softmax layer outside the state (``ce``)."""
    return len(hidden if arch == "mlp" else channels) + (0 if loss == "ce" else 1)
