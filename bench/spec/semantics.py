"""Semantics policies: one set of values for every framework, or each framework's own defaults.

``harmonised`` (the default) is the suite's fairness rule: every value where frameworks differ is
decided once and passed explicitly to every backend, and every backend starts from the same NumPy
weights, so the frameworks compute the same thing and the parity ladder can prove it.

``native`` answers what a framework's defaults cost: each backend runs as the obvious user code
gets it, with its own initialisers (drawn by the framework from the cell's seed), optimizer
epsilon and its placement, RMSprop decay, BatchNorm momentum and epsilon and leaky-ReLU slope.
Data, batches, model shape, learning rate and epochs stay identical. Native runs cannot start from
identical weights, so they are never parity-checked. Each adapter declares its ``Native`` value
as class data (docs/architecture.md, "Semantics policies"); nothing here knows a framework.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

from bench.spec.model import ModelSpec, Residual
from bench.spec.rules import Rules

Policy = Literal["harmonised", "native"]
"""The semantics policies, declared once: TrainSpec's field type, the sweep's valid values
(``POLICIES``) and the reports' names (``HARMONISED``, ``NATIVE``) all come from here."""
POLICIES: tuple[Policy, ...] = get_args(Policy)
HARMONISED, NATIVE = POLICIES
"""``HARMONISED`` is the default, and the policy of every record written before policies existed."""

InitScheme = Literal["glorot_uniform", "kaiming_uniform", "lecun_normal"]
"""The initialiser schemes (BatchNorm starts at gamma 1, beta 0, mean 0, variance 1 in every one)."""

HARMONISED_INIT: InitScheme = "glorot_uniform"
"""The scheme of the canonical weights (bench.spec.weights), drawn once in NumPy and loaded everywhere."""

NATIVE_FIELDS = ("epsilon", "rho", "bn_momentum", "bn_epsilon", "leaky_relu_slope")
"""The TrainSpec fields a framework's defaults may change; every other field stays the sweep's."""
NATIVE_LAYER_FIELDS: dict[str, tuple[str, ...]] = {"LayerNorm": ("epsilon",)}
"""The layer fields a framework's defaults may change, by layer type, where a layer leaves the field unset."""


@dataclass(frozen=True)
class Native:
    """A framework's own defaults, as a user who writes the obvious code gets them.

    ``overrides`` are TrainSpec values in the spec's conventions (``bn_momentum`` is the weight of
    the old statistic, as in Keras and Flax; the torch adapter converts), ``init`` the scheme of the
    framework's default initialisers, ``rules`` the formulas it then follows (bench.spec.rules).
    ``layers`` are its layer defaults by layer type (``{"LayerNorm": {"epsilon": 1e-6}}``): what a
    layer of the model gets for a field it does not set itself (``NATIVE_LAYER_FIELDS``).
    """

    overrides: Mapping[str, float]
    init: InitScheme
    rules: Rules
    layers: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.overrides) - set(NATIVE_FIELDS)
        if unknown:
            raise ValueError(f"native overrides may only set {', '.join(NATIVE_FIELDS)}; got {sorted(unknown)}")
        for kind, values in self.layers.items():
            if not set(values) <= set(NATIVE_LAYER_FIELDS.get(kind, ())):
                raise ValueError(f"native layer defaults may only set {NATIVE_LAYER_FIELDS}; got {kind} {sorted(values)}")

    def model(self, model: ModelSpec) -> ModelSpec:
        """``model`` with ``layers``' defaults on every layer (inside containers too) that leaves the field unset;
        a value the spec names (in TOML or in code) is the spec's and stays."""
        def fill(layer):
            unset = {k: v for k, v in self.layers.get(layer.type, {}).items() if k not in layer.model_fields_set}
            inner = {"layers": tuple(fill(sub) for sub in layer.layers)} if isinstance(layer, Residual) else {}
            return layer.model_copy(update={**unset, **inner}) if unset or inner else layer

        return model.model_copy(update={"layers": tuple(fill(layer) for layer in model.layers)})
