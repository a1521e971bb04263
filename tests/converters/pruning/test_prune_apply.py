"""Structured pruning really removes channels, keeps output shapes, and keeps coupled channels
consistent: with the removed channels zeroed first, the pruned model computes the same outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from prune_models import (
    BUILDERS,
    mobilenet_v2,
    random_input,
    randomize_bn,
    resnet_like,
    zero_removed_channels,
)

from converters.pruning import (
    Criterion,
    PruneSpec,
    PruningPlan,
    apply_plan,
    plan_pruning,
    prune_model,
)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_zeroed_channels_pruned_model_computes_the_same(name):
    model = BUILDERS[name]()
    randomize_bn(model)
    plan = plan_pruning(model, PruneSpec(ratio=0.5, protect_first_last=False))
    assert plan.pruned_groups, "something must be pruned"
    zero_removed_channels(model, plan)
    pruned = apply_plan(model, plan)
    x = random_input(model)
    np.testing.assert_allclose(pruned(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-5)
    assert [tuple(t.shape) for t in pruned.outputs] == [tuple(t.shape) for t in model.outputs]
    assert pruned.count_params() < model.count_params()


def test_sequential_cnn_parameter_counts_fall_as_expected():
    model = BUILDERS["sequential_cnn"]()
    pruned, plan = prune_model(model, PruneSpec(ratio=0.5))
    kept = {g.producers[0]: len(g.keep) for g in plan.groups}
    assert kept == {"c1": 16, "c2": 16, "fc": 32, "probs": 10}  # c1 protected, probs is output
    # c2 3x3x16x16+16, bn 4x16, fc (4*4*16)x32+32, probs 32x10+10, c1 unchanged 160
    expected = 160 + (9 * 16 * 16 + 16) + 4 * 16 + (256 * 32 + 32) + (32 * 10 + 10)
    assert pruned.count_params() == expected
    assert pruned.get_layer("fc").kernel.shape == (256, 32)


def test_mlp_uniform_ratio_and_round_to():
    model = BUILDERS["mlp"]()
    pruned, _ = prune_model(model, PruneSpec(ratio=0.3, round_to=8))
    widths = [pruned.get_layer(n).units for n in ("h1", "h2", "h3", "logits")]
    assert widths == [64, 32, 24, 3]  # h1 protected; 48*0.7=34 -> 32, 32*0.7=23 -> 24
    assert all(w % 8 == 0 for w in widths[:3])
    assert pruned(random_input(model)).shape == (4, 3)


def test_residual_groups_couple_every_branch():
    model = resnet_like()
    plan = plan_pruning(model, PruneSpec(ratio=0.5, protect_first_last=False))
    by_id = {g.id: g for g in plan.groups}
    trunk = by_id["group:stem"]
    assert set(trunk.producers) == {"stem", "b0_c2", "b1_c2"}
    roles = {m["layer"]: m["role"] for m in trunk.members}
    assert roles["dw"] == "depthwise" and roles["sep"] == "consumer" and roles["stem_bn"] == "norm"
    cat = [m for g in plan.groups for m in g.members if m["layer"] == "cat_bn"]
    assert sorted(m["offset"] for m in cat) == [0, 24]  # concat maps channel ranges
    pruned = apply_plan(model, plan)
    assert pruned.get_layer("b0_add").output.shape[-1] == 8
    assert pruned.get_layer("cat").output.shape[-1] == 12 + 4


def test_criteria_pick_different_channels_and_bn_gamma_uses_gamma():
    model = resnet_like()
    gamma = model.get_layer("b0_bn1").gamma
    g = np.ones(24, dtype="float32")
    g[:12] = 0.01
    gamma.assign(g)
    plan = plan_pruning(model, PruneSpec(ratio=0.5, criterion=Criterion.BN_GAMMA))
    grp = next(p for p in plan.groups if p.id == "group:b0_c1")
    assert grp.keep == list(range(12, 24)) and grp.scores["criterion"] == "bn-gamma"
    l2 = plan_pruning(model, PruneSpec(ratio=0.5, criterion=Criterion.L2))
    assert next(p for p in l2.groups if p.id == "group:b0_c1").scores["criterion"] == "l2"


def test_taylor_criterion_uses_gradients():
    model = BUILDERS["mlp"]()
    x = random_input(model, n=32)
    y = np.arange(32) % 3
    plan = plan_pruning(model, PruneSpec(ratio=0.5, criterion="taylor", taylor_batches=1),
                        data=(x, y))
    assert {g.scores["criterion"] for g in plan.pruned_groups} == {"taylor"}
    assert apply_plan(model, plan)(x).shape == (32, 3)


def test_global_ranking_respects_floor_and_total():
    model = resnet_like()
    spec = PruneSpec(ratio=0.5, global_ranking=True, max_layer_ratio=0.75, protect_first_last=False)
    plan = plan_pruning(model, spec)
    scored = [g for g in plan.groups if g.scores]
    removed = sum(g.channels - len(g.keep) for g in scored)
    assert removed == round(0.5 * sum(g.channels for g in scored))
    assert all(len(g.keep) >= g.channels * 0.25 for g in scored)


def test_plan_round_trips_as_json_and_replays(tmp_path):
    model = resnet_like()
    plan = plan_pruning(model, PruneSpec(ratio=0.25, round_to=4))
    path = plan.save(tmp_path / "plan.json")
    raw = json.loads(path.read_text())
    assert raw["schema"] == "edgekit.pruning_plan" and raw["schema_version"] == 1
    again = PruningPlan.load(path)
    assert again.to_dict() == plan.to_dict()
    x = random_input(model)
    np.testing.assert_allclose(apply_plan(model, again)(x).numpy(),
                               apply_plan(model, plan)(x).numpy(), rtol=1e-6)


def test_pruned_model_saves_and_loads_safely(tmp_path):
    import keras

    model = resnet_like()
    pruned, _ = prune_model(model, PruneSpec(ratio=0.5))
    pruned.save(tmp_path / "p.keras")
    back = keras.saving.load_model(tmp_path / "p.keras", safe_mode=True)
    x = random_input(model)
    np.testing.assert_allclose(back(x).numpy(), pruned(x).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_mobilenet_v2_prunes_consistently():
    model = mobilenet_v2(32)
    randomize_bn(model)
    plan = plan_pruning(model, PruneSpec(ratio=0.5, round_to=8))
    assert len(plan.pruned_groups) >= 10
    zero_removed_channels(model, plan)
    pruned = apply_plan(model, plan)
    x = random_input(model, n=2)
    assert pruned.output.shape == model.output.shape
    np.testing.assert_allclose(pruned(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-6)
    assert pruned.count_params() < 0.75 * model.count_params()
    for layer in pruned.layers:  # every depthwise ties its input and output channels
        if type(layer).__name__ == "DepthwiseConv2D":
            assert layer.input.shape[-1] == layer.output.shape[-1]
