"""tfsparse.export: TFLite files that run in LiteRT's default delegates and match Keras, SavedModels."""

import os
import warnings

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from conftest import make_cnn, make_digits_cnn, make_mlp

import tfsparse
from tfsparse import export, mask_updates

QUANTIZE_MODES = [None, "dynamic", "float16", "int8"]
# Largest accepted |TFLite - Keras| as a fraction of the largest |Keras output| (to_tflite's docstring).
TOLERANCES = {None: 1e-4, "float16": 1e-2, "dynamic": 0.05, "int8": 0.15}
SPARSITY = 0.8


def _pruned(model: keras.Model) -> keras.Model:
    pruned = tfsparse.prune_low_magnitude(model, pruning_schedule=tfsparse.ConstantSparsity(SPARSITY, 0))
    mask_updates.prune_to(mask_updates.collect_wrappers(pruned), lambda wrapper: SPARSITY)
    return pruned


@pytest.fixture(scope="module")
def models():
    """Pruned digits CNN and MLP (80% of every kernel zero), each with sample inputs."""
    from sklearn.datasets import load_digits

    keras.utils.set_random_seed(0)
    images = (load_digits().images[:200] / 16.0).astype("float32")[..., None]
    tabular = np.random.default_rng(0).normal(size=(200, 16)).astype("float32")
    return {"cnn": (_pruned(make_digits_cnn()), images), "mlp": (_pruned(make_mlp()), tabular)}


@pytest.fixture(scope="module")
def converted(models):
    """Memoized `to_tflite(model, sparse=..., quantize=...)`: (bytes, warning messages)."""
    cache = {}

    def convert(name, quantize, sparse):
        if (name, quantize, sparse) not in cache:
            model, inputs = models[name]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                flatbuffer = export.to_tflite(
                    model, sparse=sparse, quantize=quantize, representative_data=inputs
                )
            messages = [str(w.message) for w in caught if w.category is UserWarning]
            cache[name, quantize, sparse] = (flatbuffer, messages)
        return cache[name, quantize, sparse]

    return convert


def _run_in_litert(flatbuffer: bytes, inputs: np.ndarray) -> np.ndarray:
    """The file's outputs, one sample per invocation, with LiteRT's default delegates."""
    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    (source,), (target,) = interpreter.get_input_details(), interpreter.get_output_details()
    outputs = []
    for sample in inputs:
        interpreter.set_tensor(source["index"], sample[None])
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(target["index"])[0])
    return np.stack(outputs)


def _op_names(flatbuffer: bytes) -> list[str]:
    interpreter = Interpreter(
        model_content=flatbuffer,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    return [node["op_name"] for node in interpreter._get_ops_details()]


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("quantize", QUANTIZE_MODES, ids=str)
@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_tflite_outputs_match_keras_within_tolerance_under_default_delegates(
    converted, models, name, quantize, sparse
):
    flatbuffer, _ = converted(name, quantize, sparse)
    model, inputs = models[name]
    expected = keras.ops.convert_to_numpy(model(inputs[:32], training=False))
    difference = np.max(np.abs(_run_in_litert(flatbuffer, inputs[:32]) - expected))
    assert difference <= TOLERANCES[quantize] * np.max(np.abs(expected))

    report = export.verify_tflite(flatbuffer, model, inputs[:32], runs=5)
    assert report.runs_with_default_delegates and report.fully_delegated, str(report)
    assert report.quantization == quantize
    assert report.max_abs_difference == pytest.approx(difference, rel=1e-3, abs=1e-7)
    assert report.within_tolerance


@pytest.mark.parametrize("quantize", QUANTIZE_MODES, ids=str)
@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_sparse_file_is_never_larger_than_dense(converted, name, quantize):
    sparse, _ = converted(name, quantize, True)
    dense, _ = converted(name, quantize, False)
    if quantize in (None, "float16"):
        assert len(sparse) < 0.8 * len(dense)
    else:
        assert len(sparse) <= len(dense)
    if quantize is None and name == "cnn":
        assert len(sparse) < 0.4 * len(dense)  # 80% of float32 weights gone, indices cost the rest


def test_int8_sparse_keeps_conv_weights_sparse_and_runs_under_default_delegates(converted, models):
    flatbuffer, messages = converted("cnn", "int8", True)
    dense, _ = converted("cnn", "int8", False)
    # The 3x3x16x32 convolution stays sparse (the first one, 144 int8 weights, is smaller dense);
    # the dense layers' weights are stored dense, and the warning says so.
    ops = _op_names(flatbuffer)
    assert ops.count("DENSIFY") == 1 and ops[ops.index("DENSIFY") + 1] == "CONV_2D"
    assert len(flatbuffer) < len(dense)
    assert len(messages) == 1 and "FULLY_CONNECTED" in messages[0] and "stored dense" in messages[0]
    interpreter = Interpreter(model_content=flatbuffer)  # plain defaults: XNNPack on
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], models["cnn"][1][:1])
    interpreter.invoke()
    assert np.all(np.isfinite(interpreter.get_tensor(interpreter.get_output_details()[0]["index"])))


def _raw_conversion(model, inputs, sparse, quantize, free_batch=False):
    """The converter's own output, without to_tflite's checks (what users get by hand)."""
    import tensorflow as tf

    model = tfsparse.strip_pruning(model)
    if not free_batch:
        batch_one = keras.Input(batch_shape=(1, *model.inputs[0].shape[1:]))
        model = keras.Model(batch_one, model(batch_one))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY] if sparse else []
    if quantize == "int8":
        converter.optimizations.append(tf.lite.Optimize.DEFAULT)
        converter.representative_dataset = lambda: ([sample[None]] for sample in inputs[:50])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        return converter.convert()


def test_raw_int8_sparse_conversion_fails_in_xnnpack_and_the_report_says_so(models):
    # The LiteRT 2.3 trap that to_tflite works around: if this starts passing, the workaround
    # in tfsparse/export/tflite.py can go.
    model, inputs = models["cnn"]
    raw = _raw_conversion(model, inputs, sparse=True, quantize="int8")
    with pytest.raises(RuntimeError, match="failed to delegate FULLY_CONNECTED"):
        Interpreter(model_content=raw).allocate_tensors()
    report = export.verify_tflite(raw, model, inputs[:8], runs=3)
    assert not report.runs_with_default_delegates and not report.fully_delegated
    assert "failed to delegate" in report.delegate_error
    assert report.within_tolerance  # measured on the builtin kernels, which do run it


def test_verify_tflite_finds_nodes_xnnpack_does_not_take(models, tmp_path):
    # With a free batch dimension, Keras 3's Flatten leaves SHAPE/STRIDED_SLICE/PACK nodes in the
    # graph that XNNPack does not take.
    model, inputs = models["cnn"]
    path = tmp_path / "free_batch.tflite"
    path.write_bytes(_raw_conversion(model, inputs, sparse=False, quantize=None, free_batch=True))
    report = export.verify_tflite(str(path), model, inputs[:8], runs=3)
    assert report.runs_with_default_delegates and not report.fully_delegated
    assert "SHAPE" in report.undelegated_ops and "CONV_2D" not in report.undelegated_ops
    assert report.within_tolerance and report.quantization is None


def test_verify_tflite_report_measures_size_gzip_and_latency(converted, models):
    flatbuffer, _ = converted("mlp", None, True)
    model, inputs = models["mlp"]
    report = export.verify_tflite(flatbuffer, model, inputs[:4], runs=7)
    values = report.as_dict()
    assert values["size_bytes"] == len(flatbuffer)
    assert 0 < values["gzip_bytes"] < len(flatbuffer)
    assert values["latency_ms"] > 0 and values["runs"] == 7
    assert values["fully_delegated"] is True and values["undelegated_ops"] == []
    text = str(report)
    assert f"{len(flatbuffer):,} bytes" in text and "every node delegated to XNNPack" in text


def test_cnn_with_batch_norm_and_depthwise_exports_sparse_and_fully_delegated():
    keras.utils.set_random_seed(0)
    model = _pruned(make_cnn())
    inputs = np.random.default_rng(1).random((16, 8, 8, 1)).astype("float32")
    flatbuffer = export.to_tflite(model, sparse=True, representative_data=inputs)
    report = export.verify_tflite(flatbuffer, model, inputs, runs=3)
    assert report.fully_delegated and report.within_tolerance
    assert "DENSIFY" in _op_names(flatbuffer)


def test_written_file_is_complete_loads_and_is_not_overwritten_without_overwrite(models, tmp_path):
    model, inputs = models["mlp"]
    path = tmp_path / "model.tflite"
    flatbuffer = export.to_tflite(model, path, sparse=True)
    assert path.read_bytes() == flatbuffer
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()

    with pytest.raises(ValueError, match="overwrite=True") as refused:
        export.to_tflite(model, path, sparse=False)
    assert isinstance(refused.value, FileExistsError)
    assert path.read_bytes() == flatbuffer

    dense = export.to_tflite(model, path, sparse=False, overwrite=True)
    assert path.read_bytes() == dense and len(dense) > len(flatbuffer)
    assert sorted(os.listdir(tmp_path)) == ["model.tflite"]  # no temporary files left behind


@pytest.mark.parametrize("quantize", ["INT8", "int4", 8, "none"])
def test_bad_quantize_raises_value_error_naming_the_argument_and_allowed_values(models, quantize):
    with pytest.raises(ValueError, match=r"`quantize` must be one of \(None, 'dynamic', 'float16', 'int8'\)"):
        export.to_tflite(models["mlp"][0], quantize=quantize)


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, inputs):
        return self.dense(inputs)


def test_bad_arguments_raise_value_errors_naming_them(models, tmp_path):
    model, inputs = models["mlp"]
    with pytest.raises(ValueError, match="`representative_data` is required"):
        export.to_tflite(model, quantize="int8")
    with pytest.raises(
        ValueError, match=r"`representative_data` must have the model's input shape \(samples, 16\)"
    ):
        export.to_tflite(model, quantize="int8", representative_data=inputs[:, :8])
    with pytest.raises(ValueError, match="`model` must be a Keras model"):
        export.to_tflite("model.keras")
    with pytest.raises(ValueError, match="`model` must be a Sequential or functional model"):
        export.to_tflite(_Subclassed())
    with pytest.raises(ValueError, match="`sparse` must be True or False"):
        export.to_tflite(model, sparse="yes")
    with pytest.raises(ValueError, match="does not exist"):
        export.to_tflite(model, tmp_path / "missing" / "model.tflite")
    with pytest.raises(ValueError, match="`tflite`: no file at"):
        export.verify_tflite(tmp_path / "missing.tflite", model, inputs)
    with pytest.raises(ValueError, match="`inputs` must have the model's input shape"):
        export.verify_tflite(b"", model, inputs[:, :3])


def test_saved_model_reloads_with_the_keras_outputs_and_refuses_to_overwrite(models, tmp_path):
    import tensorflow as tf

    model, inputs = models["cnn"]
    path = str(tmp_path / "serving")
    report = export.to_saved_model(model, path, inputs[:16])
    expected = keras.ops.convert_to_numpy(model(inputs[:16], training=False))
    reloaded = tf.saved_model.load(path)  # kept in a name: its variables die with it
    np.testing.assert_allclose(reloaded.serve(tf.constant(inputs[:16])).numpy(), expected, atol=1e-5)
    assert report.max_abs_difference <= report.tolerance and report.size_bytes > 0

    with pytest.raises(ValueError, match="overwrite=True"):
        export.to_saved_model(models["mlp"][0], path)
    assert reloaded.serve(tf.constant(inputs[:2])).shape == (2, 10)

    export.to_saved_model(models["mlp"][0], path, overwrite=True)
    replaced = tf.saved_model.load(path)
    assert replaced.serve(tf.constant(models["mlp"][1][:2])).shape == (2, 4)
    assert sorted(os.listdir(tmp_path)) == ["serving"]


def _densify_outputs(flatbuffer: bytes) -> dict[int, np.ndarray]:
    """{sparse tensor index: the values LiteRT's DENSIFY kernel expands it to}."""
    interpreter = Interpreter(
        model_content=flatbuffer,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        experimental_preserve_all_tensors=True,
    )
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    interpreter.invoke()
    return {
        int(node["inputs"][0]): interpreter.get_tensor(int(node["outputs"][0]))
        for node in interpreter._get_ops_details()
        if node["op_name"] == "DENSIFY"
    }


@pytest.fixture(scope="module")
def block_pruned_mlp():
    """An MLP pruned in 16x1 blocks: the converter lets FULLY_CONNECTED read those weights sparse."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(8)]
    )
    pruned = tfsparse.prune_low_magnitude(
        model, pruning_schedule=tfsparse.ConstantSparsity(SPARSITY, 0), block_size=(16, 1)
    )
    mask_updates.prune_to(mask_updates.collect_wrappers(pruned), lambda wrapper: SPARSITY)
    return pruned, np.random.default_rng(2).random((40, 64)).astype("float32")


@pytest.mark.parametrize("quantize", [None, "int8"], ids=str)
def test_sparse_weights_expand_to_what_litert_densify_computes(models, block_pruned_mlp, quantize):
    from tfsparse.export import _flatbuffer, tflite

    for model, inputs in (models["cnn"], block_pruned_mlp):
        flatbuffer = tflite._convert(tfsparse.strip_pruning(model), True, quantize, [inputs[:50]])
        weights = _flatbuffer.sparse_weights(flatbuffer)
        # Block-sparse weights read by their op directly: LiteRT expands them once given DENSIFY.
        flatbuffer = _flatbuffer.through_densify(flatbuffer, weights)
        expected = _densify_outputs(flatbuffer)
        parsed = _flatbuffer._read(flatbuffer)
        assert len(expected) == len(weights) >= 2
        for tensor, values in expected.items():
            ours = _flatbuffer.expanded(parsed, parsed.subgraphs[0].tensors[tensor])
            np.testing.assert_array_equal(ours, values)
            assert np.mean(ours == 0) >= SPARSITY - 0.05


@pytest.mark.parametrize("quantize", QUANTIZE_MODES, ids=str)
def test_block_sparse_weights_run_correctly_in_every_mode(block_pruned_mlp, quantize):
    model, inputs = block_pruned_mlp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sparse = export.to_tflite(model, sparse=True, quantize=quantize, representative_data=inputs)
        dense = export.to_tflite(model, sparse=False, quantize=quantize, representative_data=inputs)
    report = export.verify_tflite(sparse, model, inputs, runs=3)
    assert report.runs_with_default_delegates and report.within_tolerance, str(report)
    assert len(sparse) <= len(dense)
    ops = _op_names(sparse)
    if quantize in (None, "int8"):
        # Read sparse by FULLY_CONNECTED itself, on LiteRT's builtin sparse kernels.
        assert "DENSIFY" not in ops and len(sparse) < 0.6 * len(dense)
        assert report.undelegated_ops == ("FULLY_CONNECTED", "FULLY_CONNECTED")
    if quantize == "float16":
        # Read sparse directly, LiteRT computes NaN; expanded by DENSIFY, XNNPack takes it all.
        assert ops.count("DENSIFY") == 2 and report.fully_delegated


def test_weight_the_converter_cannot_encode_falls_back_to_the_dense_file_with_a_warning():
    # int8 Dense(4 -> 64): the converter gives the 64x4 weight 1x16 blocks, losing values.
    keras.utils.set_random_seed(0)
    model = _pruned(
        keras.Sequential(
            [keras.Input((4,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(8)]
        )
    )
    inputs = np.random.default_rng(3).random((40, 4)).astype("float32")
    with pytest.warns(
        UserWarning, match=r"cannot hold FULLY_CONNECTED weight .*\(64x4 int8\).*returning the dense"
    ):
        flatbuffer = export.to_tflite(model, sparse=True, quantize="int8", representative_data=inputs)
    assert "DENSIFY" not in _op_names(flatbuffer)
    report = export.verify_tflite(flatbuffer, model, inputs, runs=3)
    assert report.fully_delegated and report.within_tolerance


def test_nan_weights_or_inputs_are_refused_naming_where_the_nan_is(tmp_path):
    # Both used to end in "differs ... by up to nan, more than the tolerance nan".
    model = make_mlp()
    x = np.random.default_rng(0).normal(size=(8, 16)).astype("float32")
    x[5, 3] = np.nan
    with pytest.raises(
        ValueError, match=r"`representative_data` holds 1 NaN and 0 infinite values \(first in sample 5\)"
    ):
        export.to_tflite(model, representative_data=x)
    dense = model.layers[1]
    kernel, bias = dense.get_weights()
    kernel[0, 0] = np.inf
    kernel[1, :2] = np.nan
    dense.set_weights([kernel, bias])
    with pytest.raises(
        ValueError, match=f"weight '\\S*{dense.name}/kernel' has 2 NaN and 1 infinite values.*diverged"
    ):
        export.to_tflite(model, str(tmp_path / "m.tflite"))
    with pytest.raises(ValueError, match="has 2 NaN and 1 infinite values"):
        export.to_saved_model(model, str(tmp_path / "saved"))
    assert os.listdir(tmp_path) == []
