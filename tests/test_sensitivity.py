import keras
import numpy as np
import pytest

import tfsparse
from tfsparse import SensitivityScan


@pytest.fixture(scope="module")
def digits_scan(trained_digits_cnn):
    model, validation, _ = trained_digits_cnn
    return tfsparse.sensitivity_scan(model, validation, sparsities=(0.5, 0.9, 0.98), verbose=0)


def _accuracy(model, data):
    x, y = data
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=-1) == y))


def test_scan_measures_each_layer_alone_as_one_shot_pruning_would(trained_digits_cnn, digits_scan):
    model, validation, _ = trained_digits_cnn
    names = [layer.name for layer in model.layers if layer.weights]
    assert digits_scan.metric == "accuracy" and digits_scan.higher_is_better
    assert list(digits_scan.results) == names
    assert all(list(by) == [0.5, 0.9, 0.98] for by in digits_scan.results.values())
    assert digits_scan.baseline == pytest.approx(_accuracy(model, validation))
    for name in (names[0], names[-1]):
        alone = tfsparse.prune_oneshot(model, {name: 0.9}, criterion="magnitude")
        assert digits_scan.results[name][0.9] == pytest.approx(_accuracy(alone, validation))
    assert digits_scan.sizes == {name: int(np.prod(model.get_layer(name).kernel.shape)) for name in names}
    # Layers differ: the classifier loses more at 98% than the big dense layer does.
    assert digits_scan.results[names[-1]][0.98] < digits_scan.results[names[2]][0.98] - 0.1
    assert model.get_layer(names[2]).kernel.numpy().min() != 0  # the model is not changed


def test_scan_prints_saves_loads_and_plots(digits_scan, tmp_path):
    table = str(digits_scan)
    assert "conv2d_1" in table and "90%" in table and f"{digits_scan.results['dense'][0.9]:.4f}" in table
    path = str(tmp_path / "scan.json")
    assert digits_scan.save(path) == path
    loaded = SensitivityScan.load(path)
    assert loaded == digits_scan
    assert SensitivityScan.from_json(digits_scan.to_json()).results == digits_scan.results
    with pytest.raises(ValueError, match="force=True"):
        digits_scan.save(path)
    png = digits_scan.plot(str(tmp_path / "scan.png"))
    with open(png, "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.json", "scan.png"]  # no temporary left
    with pytest.raises(ValueError, match="not a sensitivity scan"):
        SensitivityScan.from_json('{"metric": "accuracy"}')


def test_scan_of_a_regression_model_uses_the_compiled_loss(tabular):
    x, _ = tabular
    target = x @ np.linspace(-1, 1, 16).astype("float32")[:, None]
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(0.05), "mse")
    model.fit(x, target, epochs=5, batch_size=64, verbose=0)
    scan = tfsparse.sensitivity_scan(model, (x, target), sparsities=(0.3, 0.9), verbose=0)
    assert scan.metric == "loss" and not scan.higher_is_better
    first = model.layers[0].name
    assert scan.results[first][0.9] > scan.results[first][0.3] > scan.baseline * 0.999
    assert scan.drops()[first][0.9] == pytest.approx(scan.results[first][0.9] - scan.baseline)


def test_scan_refuses_bad_arguments(trained_digits_cnn):
    model, validation, _ = trained_digits_cnn
    with pytest.raises(ValueError, match="held-out arrays"):
        tfsparse.sensitivity_scan(model, validation[0], verbose=0)
    with pytest.raises(ValueError, match=r"sparsities=\(0.5, 1.0\)"):
        tfsparse.sensitivity_scan(model, validation, sparsities=(0.5, 1.0), verbose=0)
    with pytest.raises(ValueError, match="'nope'"):
        tfsparse.sensitivity_scan(model, validation, layers=["nope"], verbose=0)
    with pytest.raises(ValueError, match="criterion='movement'"):
        tfsparse.sensitivity_scan(model, validation, criterion="movement", verbose=0)


def _branchy_model():
    """A residual block, a nested model, a layer called twice and a concatenation."""
    inputs = keras.Input((16,))
    stem = keras.layers.Dense(12, activation="relu", name="stem")(inputs)
    branch = keras.layers.Dense(12, activation="relu", name="branch")(stem)
    branch = keras.layers.Dense(12, activation="relu", name="branch_2")(branch)
    block = keras.layers.Add(name="residual")([stem, branch])
    nested = keras.Sequential([keras.Input((12,)), keras.layers.Dense(12, name="inner")], name="nested")
    shared = keras.layers.Dense(12, activation="relu", name="shared")
    twice = shared(shared(nested(block)))
    outputs = keras.layers.Dense(4, name="head")(keras.layers.Concatenate()([twice, block]))
    return keras.Model(inputs, outputs)


def test_scan_runs_only_the_graph_after_each_layer_with_the_same_results(tabular):
    x, y = tabular
    model = _branchy_model()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    masked = tfsparse.sensitivity.MaskedCopy(model, (x, y))
    cuts = tfsparse.sensitivity.downstream_cuts(masked.model)
    # Nested and shared layers fall back to the full model; the residual branch's cut holds the
    # shortcut too, and the head's cut is both inputs of the concatenation.
    assert sorted(cuts) == ["branch", "branch_2", "head", "stem"]
    assert [tuple(t.shape) for t in cuts["stem"]] == [(None, 16)]
    assert cuts["branch"] == [masked.model.get_layer("prune_low_magnitude_stem").output]
    assert [t.name for t in cuts["branch_2"]] == [
        masked.model.get_layer(f"prune_low_magnitude_{name}").output.name for name in ("branch", "stem")
    ]
    assert len(cuts["head"]) == 1 and tuple(cuts["head"][0].shape) == (None, 24)

    def confidence(y_true, y_pred):  # a continuous metric: any numerical difference shows
        return float(np.mean(y_pred[np.arange(len(y_true)), y_true]))

    for metric in ("accuracy", confidence):
        fast, full = (
            tfsparse.sensitivity_scan(
                model, (x, y), sparsities=(0.5, 0.9), metric=metric, verbose=0, downstream_only=only
            )
            for only in (True, False)
        )
        assert fast.results == full.results and fast.baseline == full.baseline
        assert list(fast.results) == ["stem", "branch", "branch_2", "inner", "shared", "head"]
    assert fast.results["stem"][0.9] != fast.results["stem"][0.5]
    # One-shot pruning of the residual branch alone gives what the scan measured.
    alone = tfsparse.prune_oneshot(model, {"branch_2": 0.9}, criterion="magnitude")
    assert fast.results["branch_2"][0.9] == pytest.approx(
        confidence(y, alone.predict(x, verbose=0)), rel=1e-5
    )


def _residual_cnn():
    """A stem, a block with a projection shortcut (as in ResNet's first block of a stage), an
    identity block, then pooling and a classifier."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem_conv")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.Activation("relu", name="stem_out")(x)
    for block, projection in (("block1", True), ("block2", False)):
        shortcut = x
        if projection:
            shortcut = keras.layers.Conv2D(16, 1, strides=2, name=f"{block}_0_conv")(x)
            shortcut = keras.layers.BatchNormalization(name=f"{block}_0_bn")(shortcut)
        y = keras.layers.Conv2D(
            16, 3, strides=2 if projection else 1, padding="same", name=f"{block}_1_conv"
        )(x)
        y = keras.layers.BatchNormalization(name=f"{block}_1_bn")(y)
        y = keras.layers.Activation("relu")(y)
        y = keras.layers.Conv2D(16, 3, padding="same", name=f"{block}_2_conv")(y)
        y = keras.layers.BatchNormalization(name=f"{block}_2_bn")(y)
        x = keras.layers.Activation("relu", name=f"{block}_out")(
            keras.layers.Add(name=f"{block}_add")([shortcut, y])
        )
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="head")(x))


def test_scan_chains_compiled_pieces_between_block_ends_with_the_same_results():
    model = _residual_cnn()
    generator = np.random.default_rng(0)
    x = generator.normal(size=(40, 8, 8, 3)).astype("float32")
    y = generator.integers(0, 5, 40)
    masked = tfsparse.sensitivity.MaskedCopy(model, (x, y), batch_size=16)
    nodes = tfsparse.sensitivity._graph_nodes(masked.model)
    # The tensors that alone determine the outputs: those of the stem, the ends of the blocks, the
    # pooled features. Inside a block the shortcut and the branch are both needed.
    anchors = tfsparse.sensitivity._anchors(masked.model, nodes)
    stem, ends = (
        ("prune_low_magnitude_stem_conv", "stem_bn", "stem_out"),
        ("block1_add", "block1_out", "block2_add", "block2_out", "pool"),
    )
    assert [t.name for t in anchors] == [masked.model.get_layer(name).output.name for name in stem + ends]
    # The chain splits only where a layer's own piece ends: after the stem's convolution and at
    # the sum of each block (the head's own piece reaches the outputs).
    _, first_anchors, used = tfsparse.sensitivity._downstream_plan(masked.model)
    assert [t.name for t in used] == [anchors[i].name for i in (0, 3, 5)]
    assert first_anchors == {
        "stem_conv": 0, "block1_0_conv": 1, "block1_1_conv": 1, "block1_2_conv": 1, "block2_1_conv": 2,
        "block2_2_conv": 2,
    }  # fmt: skip

    def confidence(y_true, y_pred):  # continuous: any numerical difference shows
        return float(np.mean(np.abs(y_pred)))

    fast, full = (
        tfsparse.sensitivity_scan(
            model,
            (x, y),
            sparsities=(0.5, 0.9),
            metric=confidence,
            batch_size=16,
            verbose=0,
            downstream_only=only,
        )
        for only in (True, False)
    )
    assert sorted(fast.results) == [
        "block1_0_conv", "block1_1_conv", "block1_2_conv", "block2_1_conv", "block2_2_conv", "head", "stem_conv"
    ]  # fmt: skip
    assert fast.results == full.results and fast.baseline == full.baseline
    assert len({value for by in fast.results.values() for value in by.values()}) == 14  # all differ
    # Each piece after a block end is compiled once and shared by every layer before it: the
    # stem's downstream runs the same piece objects as block 2's.
    for name in fast.results:
        masked.downstream_predictor(name)
    assert sorted(masked._segments) == [0, 1, 2]


def test_masks_follow_each_new_choice_of_sparsities(trained_digits_cnn):
    model, validation, _ = trained_digits_cnn
    masked = tfsparse.sensitivity.MaskedCopy(model, validation)
    first, second = list(masked.wrappers)[:2]

    def density(name):
        return float(np.mean(masked.wrappers[name].get_masks()[0]))

    masked.set_sparsities({first: 0.9})
    assert (density(first), density(second)) == (pytest.approx(0.1, abs=0.01), 1.0)
    masked.set_sparsities({second: 0.5, first: 0.9})
    assert (density(first), density(second)) == (pytest.approx(0.1, abs=0.01), pytest.approx(0.5, abs=0.01))
    masked.set_sparsities({second: 0.5})
    assert (density(first), density(second)) == (1.0, pytest.approx(0.5, abs=0.01))
    masked.set_sparsities({})
    assert all(density(name) == 1.0 for name in masked.wrappers)


def test_a_taylor_scan_scores_on_calibration_data_and_measures_on_the_held_out_data(trained_digits_cnn):
    model, validation, test = trained_digits_cnn
    kwargs = {"sparsities": (0.98,), "criterion": "taylor", "layers": ["dense"], "verbose": 0}
    own = tfsparse.sensitivity_scan(model, validation, **kwargs)
    other = tfsparse.sensitivity_scan(model, validation, calibration_data=test, **kwargs)
    # Scored on other samples, the layer pruned as one-shot pruning scores it on them.
    alone = tfsparse.prune_oneshot(model, {"dense": 0.98}, data=test, criterion="taylor", batch_size=256)
    assert other.results["dense"][0.98] == pytest.approx(_accuracy(alone, validation))
    # Scored on the very samples it measures, it keeps what they need and looks more robust.
    assert own.results["dense"][0.98] > other.results["dense"][0.98] + 0.1
    auto = {"criterion": "taylor", "sparsities": (0.5, 0.9, 0.98), "verbose": 0}
    scan = tfsparse.sensitivity_scan(model, validation, calibration_data=test, **auto)
    chosen = tfsparse.auto_sparsity(model, validation, target=0.9, calibration_data=test, **auto)
    assert chosen == tfsparse.allocation.allocate(scan, 0.9)
