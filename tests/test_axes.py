"""The cell's axes have one owner (bench/spec/cell.py AXES): the cell id, the record fields, the
grid's product and the reports' groupings all follow it, and cell ids stay what they were, so run
folders written before AXES existed still resume."""

from __future__ import annotations

import itertools
from dataclasses import fields

import pytest

from bench.results.record import FIELDS
from bench.run import grid
from bench.spec.cell import AXES, Cell
from bench.spec.model import SEED_MODELS
from bench.spec.semantics import POLICIES
from bench.spec.train import SCHEDULES, Augment, TrainSpec
from reports.records import CONFIG_AXES, VARIANT_AXES, config_axes_but

MLP = SEED_MODELS["mlp"]
SGD = TrainSpec(optimizer="sgd", learning_rate=1e-2)
PINNED = [  # written by the code before AXES (commit 90a2502), byte for byte
    (Cell("torch", MLP, TrainSpec(), "mnist-sample"), "torch|mlp|adam|relu|cce|bs128|ep1|lr0.001|fp32|default|mnist-sample"),
    (Cell("jax", SEED_MODELS["mlp_bn"], TrainSpec(semantics="native", optimizer="rmsprop", activation="tanh"), "digits",
          repeat=2),
     "jax|mlp_bn|rmsprop|tanh|cce|bs128|ep1|lr0.001|fp32|default|digits|native"),
    (Cell("tf", SEED_MODELS["cnn"], TrainSpec(augment=Augment.parse("flip,rotate=15,noise=0.05"), batch_size=32, epochs=3,
                                              learning_rate=0.0005), "synthetic:8x8x1"),
     "tf|cnn|adam|relu|cce|bs32|ep3|lr0.0005|fp32|default|synthetic:8x8x1|aug=hflip,rotate=15,noise=0.05"),
    (Cell("torch", MLP, TrainSpec(semantics="native", augment=Augment.parse("crop,zoom"), loss="mse", precision="bf16"),
          "mnist-sample"),
     "torch|mlp|adam|relu|mse|bs128|ep1|lr0.001|bf16|default|mnist-sample|native|aug=crop=4,zoom=0.1"),
] + [
    (Cell(backend, MLP, SGD.model_copy(update={"mode": mode}), "mnist-sample"),
     f"{backend}|mlp|sgd|relu|cce|bs128|ep1|lr0.01|fp32|{mode}|mnist-sample")
    for backend, modes in {"torch": ("eager", "compiled", "compiled-cudagraphs", "default"), "tf": ("graph", "eager", "xla"),
                           "jax": ("jit", "eager"), "numpy": ("eager",)}.items() for mode in modes
]


@pytest.mark.parametrize("cell,expected", PINNED, ids=[expected for _, expected in PINNED])
def test_cell_ids_are_byte_identical_to_those_before_axes(cell, expected):
    assert cell.cell_id == expected


def test_every_axis_names_a_record_field_a_sweep_field_and_a_train_spec_field():
    assert [axis.field for axis in AXES if axis.field not in FIELDS] == []
    sweep_fields = {f.name for f in fields(grid.Sweep)}
    assert [axis.sweep for axis in AXES if axis.sweep not in sweep_fields] == []
    assert [axis.sets for axis in AXES if axis.sets and axis.sets not in TrainSpec.model_fields] == []
    assert len({axis.field for axis in AXES}) == len(AXES)


def test_a_cells_record_states_every_axis_as_read():
    cell = PINNED[3][0]
    config = cell.config()
    assert {axis.field: config[axis.field] for axis in AXES} == {
        "backend": "torch", "model": "mlp", "optimizer": "adam", "activation": "relu", "loss": "mse", "batch_size": 128,
        "epochs": 1, "learning_rate": 0.001, "precision": "bf16", "mode": "default", "dataset": "mnist-sample",
        "semantics_policy": "native", "augment": "crop=4,zoom=0.1", "schedule": "constant"}


def test_the_grid_is_the_product_of_every_axis_with_one_id_per_cell():
    augment = [Augment(), Augment(hflip=True)]
    sweep = grid.Sweep(models=["mlp", "mlp_bn"], optimizers=["sgd", "adam"], activations=["relu", "tanh"],
                       losses=["cce", "mse"], batch_sizes=[32, "full"], precisions=["fp32", "bf16"],
                       modes=["eager", "compiled"], semantics=list(POLICIES), augment=augment,
                       schedules=list(SCHEDULES), repeats=2)
    cells = grid.cells(sweep, ["torch", "numpy"], ["mlp", "mlp_bn"], 500)
    assert len(cells) == 2 * 2 * 2 ** 10  # backends x repeats x ten axes of two values
    assert len({(c.cell_id, c.repeat) for c in cells}) == len(cells)
    values = {axis.field: {axis.read(c) for c in cells} for axis in AXES}
    assert values["batch_size"] == {32, 500} and values["mode"] == {"eager", "compiled"}
    assert [field for field, seen in values.items() if len(seen) < 2] == ["epochs", "dataset"]  # the learning rate follows the optimizer
    # the product nests in AXES order: the last axis varies fastest, within one backend and repeat
    first = [tuple(axis.read(c) for axis in AXES) for c in cells[:2 ** 10]]
    ranks = [_ranks(cells, axis) for axis in AXES]
    assert first == sorted(first, key=lambda point: [rank[v] for rank, v in zip(ranks, point)])


def _ranks(cells: list[Cell], axis) -> dict:
    """Each value of ``axis`` by the order it first appears in."""
    return {value: i for i, value in enumerate(dict.fromkeys(axis.read(c) for c in cells))}


def test_the_reports_group_by_every_axis_once():
    assert sorted(VARIANT_AXES + CONFIG_AXES) == sorted(axis.field for axis in AXES)
    assert VARIANT_AXES == ("backend", "mode")
    assert "augment" not in config_axes_but("augment") and len(config_axes_but("augment")) == len(CONFIG_AXES) - 1
    with pytest.raises(ValueError, match="not one of the configuration axes"):
        config_axes_but("augmentation")


def test_an_axis_left_out_of_the_id_is_only_left_out_at_its_old_value():
    omitted = [axis for axis in AXES if axis.id_omits is not None]
    assert [axis.field for axis in omitted] == ["semantics_policy", "augment", "schedule"]
    plain = Cell("torch", MLP, TrainSpec(), "mnist-sample")
    assert [axis.read(plain) for axis in omitted] == [axis.id_omits for axis in omitted]
    for policy, augment, schedule in itertools.product(POLICIES, [Augment(), Augment(noise=0.1)], SCHEDULES):
        cell = Cell("torch", MLP, TrainSpec(semantics=policy, augment=augment, schedule=schedule), "mnist-sample")
        assert cell.cell_id.count("|") == 10 + (policy != POLICIES[0]) + augment.active + (schedule != SCHEDULES[0])
