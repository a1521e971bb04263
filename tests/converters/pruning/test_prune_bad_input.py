"""Bad input gives one clear InputError (exit 2) or a named PruningWarning, never a broken model."""

from __future__ import annotations

import numpy as np
import pytest
from prune_models import BUILDERS, random_input, resnet_like

from converters.pruning import (
    PruneSpec,
    PruningPlan,
    PruningWarning,
    apply_plan,
    plan_pruning,
    prune_model,
)
from edgekit.errors import InputError


def test_subclassed_model_is_refused():
    import keras

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = keras.layers.Dense(8)

        def call(self, x):
            return self.d(x)

    net = Net()
    net(np.zeros((1, 4), "float32"))
    with pytest.raises(InputError, match="subclassed"):
        plan_pruning(net, PruneSpec())


@pytest.mark.parametrize("ratio", [0, 1, 1.5, -0.1, float("nan"), "half"])
def test_ratio_outside_zero_one(ratio):
    with pytest.raises(InputError, match="ratio must be in"):
        PruneSpec(ratio=ratio)


def test_bad_options():
    with pytest.raises(InputError, match="criterion"):
        PruneSpec(criterion="random")
    with pytest.raises(InputError, match="round_to"):
        PruneSpec(round_to=0)
    with pytest.raises(InputError, match="protect names layers"):
        plan_pruning(BUILDERS["mlp"](), PruneSpec(protect=("nope",)))
    with pytest.raises(InputError, match="taylor criterion needs data"):
        plan_pruning(BUILDERS["mlp"](), PruneSpec(criterion="taylor"))


def test_round_to_larger_than_every_layer():
    with pytest.raises(InputError, match="round_to=128 is larger than every prunable layer"):
        plan_pruning(BUILDERS["mlp"](), PruneSpec(round_to=128))


def test_round_to_larger_than_some_layers_warns_and_skips_them():
    with pytest.warns(PruningWarning, match="fewer than round_to=32"):
        plan = plan_pruning(resnet_like(), PruneSpec(round_to=32, protect_first_last=False))
    assert all(g.status != "pruned" for g in plan.groups)


def test_unsupported_layer_stops_pruning_at_its_boundary_with_a_named_warning():
    import keras

    i = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(8, 3, padding="same", name="a")(i)
    x = keras.layers.Conv2D(8, 3, padding="same", name="b")(x)
    r = keras.layers.Reshape((36, 8), name="reshape")(x)
    r = keras.layers.Conv1D(6, 1, name="c")(r)
    o = keras.layers.Dense(2, name="out")(keras.layers.Flatten()(r))
    model = keras.Model(i, o)
    with pytest.warns(PruningWarning, match="'reshape' \\(Reshape\\)"):
        pruned, plan = prune_model(model, PruneSpec(ratio=0.5, protect_first_last=False))
    status = {g.id: g.status for g in plan.groups}
    assert status["group:a"] == "pruned" and status["group:b"] == "blocked"
    assert status["group:c"] == "pruned"
    x = random_input(model)
    assert pruned(x).shape == model(x).shape


def test_plan_for_another_model_is_refused(tmp_path):
    plan = plan_pruning(BUILDERS["mlp"](), PruneSpec())
    with pytest.raises(InputError, match="another architecture"):
        apply_plan(BUILDERS["sequential_cnn"](), plan)


def test_edited_plan_with_bad_indices_is_refused():
    model = BUILDERS["mlp"]()
    d = plan_pruning(model, PruneSpec()).to_dict()
    grp = next(g for g in d["groups"] if g["status"] == "pruned")
    grp["keep"] = [0, 0, 1]
    with pytest.raises(InputError, match="distinct indices"):
        apply_plan(model, PruningPlan.from_dict(d))
    blocked = next(g for g in d["groups"] if g["status"] == "blocked")
    grp["keep"] = list(range(grp["channels"]))
    blocked["keep"] = [0]
    with pytest.raises(InputError, match="cannot be pruned"):
        apply_plan(model, PruningPlan.from_dict(d))


def test_not_a_plan_and_future_versions_are_refused(tmp_path):
    with pytest.raises(InputError, match="not an edgekit pruning plan"):
        PruningPlan.from_dict({"_type": "something"})
    d = plan_pruning(BUILDERS["mlp"](), PruneSpec()).to_dict()
    with pytest.raises(InputError, match="schema_version 99 .*upgrade edgekit"):
        PruningPlan.from_dict({**d, "schema_version": 99})
    with pytest.raises(InputError, match="schema_version 0 .*plan the model again"):
        PruningPlan.from_dict({**d, "schema_version": 0})
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InputError, match="cannot read pruning plan"):
        PruningPlan.load(tmp_path / "bad.json")


def test_a_plan_in_the_nested_form_of_earlier_edgekits_still_loads():
    plan = plan_pruning(BUILDERS["mlp"](), PruneSpec())
    d = plan.to_dict()
    data = {k: v for k, v in d.items() if k not in ("schema", "schema_version", "generated_by")}
    old = {"_type": "edgekit.PruningPlan", "_version": 1, "_data": data}
    assert PruningPlan.from_dict(old).to_dict() == d
