"""prune_blocks: residual blocks with an identity skip are found, ranked and removed exactly."""

import keras
import numpy as np
import pytest
from applications import build_application, input_batch

from tfsparse.structured.blocks import BlockPlan, apply_blocks, plan_blocks, prune_blocks, residual_blocks


def _residual_model() -> keras.Model:
    """Three residual blocks of width 8 (one written as `x + f(x)`), one projection block, a head."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    for index in range(2):
        y = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name=f"block{index}_conv1")(x)
        y = keras.layers.Conv2D(8, 3, padding="same", name=f"block{index}_conv2")(y)
        x = keras.layers.Add(name=f"block{index}_add")([x, y])
        x = keras.layers.Activation("relu", name=f"block{index}_out")(x)
    y = keras.layers.Dense(8, name="block2_dense")(x)
    x = y + x  # a `keras.ops` add, branch first
    shortcut = keras.layers.Conv2D(16, 1, name="wide_shortcut")(x)
    y = keras.layers.Conv2D(16, 3, padding="same", name="wide_conv")(x)
    x = keras.layers.Add(name="wide_add")([shortcut, y])
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="head")(x), name="residual")


def test_only_blocks_with_an_identity_skip_are_found():
    blocks = residual_blocks(_residual_model())
    assert [(b.name, b.skip, b.layers) for b in blocks[:2]] == [
        ("block0", "stem", ("block0_conv1", "block0_conv2")),
        ("block1", "block0_out", ("block1_conv1", "block1_conv2")),
    ]
    assert len(blocks) == 3 and blocks[2].skip == "block1_out" and blocks[2].layers == ("block2_dense",)
    assert residual_blocks(keras.Sequential([keras.Input((3,)), keras.layers.Dense(3)])) == []


def test_a_block_whose_branch_outputs_zeros_is_removed_with_outputs_unchanged():
    model = _residual_model()
    conv = model.get_layer("block1_conv2")
    conv.set_weights([np.zeros_like(w) for w in conv.get_weights()])
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32")
    plan = plan_blocks(model, n=1)
    assert plan.removed == ("block1",) and plan.scores["block1"] == 0.0
    smaller = apply_blocks(model, plan)
    names = {layer.name for layer in smaller.layers}
    assert not names & {"block1_conv1", "block1_conv2", "block1_add"} and "block1_out" in names
    assert smaller.count_params() == model.count_params() - 2 * (8 * 8 * 9 + 8)
    np.testing.assert_allclose(smaller.predict_on_batch(x), model.predict_on_batch(x), atol=1e-5)


def test_chained_removals_rewire_to_the_first_kept_tensor():
    model = _residual_model()
    smaller = prune_blocks(model, ratio=1.0)
    assert len(smaller.layers) == len(model.layers) - 7  # the `+` is an operation, not a layer
    # Without its blocks the model is stem -> relu -> relu -> wide block: rebuild that by hand.
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype("float32")
    stem = keras.ops.relu(keras.ops.relu(model.get_layer("stem")(x)))
    wide = model.get_layer("wide_shortcut")(stem) + model.get_layer("wide_conv")(stem)
    expected = model.get_layer("head")(keras.ops.mean(wide, axis=(1, 2)))
    np.testing.assert_allclose(smaller.predict_on_batch(x), keras.ops.convert_to_numpy(expected), atol=1e-5)


def test_output_importance_ranks_by_how_much_a_branch_changes_its_input():
    model = _residual_model()
    for name in ("block0_conv2", "block2_dense"):
        layer = model.get_layer(name)
        layer.set_weights([w * 0.01 for w in layer.get_weights()])
    x = np.random.default_rng(0).normal(size=(16, 8, 8, 3)).astype("float32")
    plan = plan_blocks(model, n=2, importance="output", data=x)
    removed = {plan.blocks[name].layers[0] for name in plan.removed}
    assert removed == {"block0_conv1", "block2_dense"}
    kept = [score for name, score in plan.scores.items() if name not in plan.removed]
    assert kept[0] > 10 * max(plan.scores[name] for name in plan.removed)


def test_a_plan_round_trips_through_json_and_refuses_another_model():
    model = _residual_model()
    plan = plan_blocks(model, n=2, importance="l1")
    again = BlockPlan.from_json(plan.to_json())
    assert again == plan
    assert "remove" in str(plan) and "keep" in str(plan)
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="does not have"):
        apply_blocks(other, plan)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(), "exactly one of `n`"),
        (dict(n=1, ratio=0.5), "exactly one of `n`"),
        (dict(n=4), "`n` must be an integer from 0 to .* \\(3\\)"),
        (dict(ratio=1.5), "`ratio`"),
        (dict(n=1, importance="taylor"), "`importance`"),
        (dict(n=1, importance="output"), "`data` is required"),
    ],
)
def test_bad_arguments_are_refused_by_name(arguments, message):
    with pytest.raises(ValueError, match=message):
        prune_blocks(_residual_model(), **arguments)


def test_resnet50_loses_blocks_and_keeps_its_inputs_and_outputs():
    model = build_application("resnet")
    blocks = residual_blocks(model)
    assert len(blocks) == 12  # 16 bottleneck blocks, 4 with a projection shortcut
    assert {"conv2_block2", "conv3_block4", "conv4_block6", "conv5_block3"} <= {b.name for b in blocks}
    plan = plan_blocks(model, n=4)
    smaller = apply_blocks(model, plan)
    assert len(smaller.layers) == len(model.layers) - 4 * 9  # 3 convs, 3 norms, 2 relus and the add
    assert smaller.input_shape == model.input_shape and smaller.output_shape == model.output_shape
    assert smaller.count_params() < model.count_params()
    x = input_batch(model)
    assert np.all(np.isfinite(smaller.predict_on_batch(x)))
