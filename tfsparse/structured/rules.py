"""How each layer type couples channels: one rule per layer type, and `register_rule` for custom ones.

A tensor's last axis (its channels) is described by an array of *atoms*, one integer per channel.
Atoms that must be removed together are joined (`RuleContext.couple`); a channel of the pruned
model is removed by removing its atom everywhere it appears. A rule reads the atoms of a layer
call's inputs, declares the layer's own channel spaces, which weight axes follow which atoms and
which config values count them, and returns the atoms of the call's outputs.

Every rule has the same signature, `rule(ctx: RuleContext) -> list of output atoms` (documented on
`RuleContext`); `channelwise(...)` builds one for layers with per-channel weights.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from tfsparse.structured.context import Rule, RuleContext, channel_count

L = keras.layers


def _channels_last(ctx) -> bool:
    return ctx.config("data_format", "channels_last") in (None, "channels_last")


def _last_axis_only(ctx, axis) -> bool:
    rank = len(ctx.input_shapes[0])
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    return len(axes) == 1 and axes[0] % rank == rank - 1


def _softmax(activation) -> bool:
    name = activation if isinstance(activation, str) else getattr(activation, "__name__", "")
    return name in ("softmax", "log_softmax")


# ---- rules -------------------------------------------------------------------------------------


def passthrough(ctx: RuleContext) -> list:
    """Layers that act on each channel alone (activations, pooling, dropout, padding, ...)."""
    if not _channels_last(ctx):
        return ctx.barrier()
    return [ctx.inputs[0]]


def activation(ctx: RuleContext) -> list:
    if _softmax(ctx.config("activation")):
        return ctx.barrier()
    return [ctx.inputs[0]]


def softmax(ctx: RuleContext) -> list:
    # Softmax over channels mixes them: removing one changes the others.
    if _last_axis_only(ctx, ctx.config("axis", -1)):
        return ctx.barrier()
    return [ctx.inputs[0]]


def prelu(ctx: RuleContext) -> list:
    alpha = ctx.layer.alpha
    channels = ctx.input_shapes[0][-1]
    if alpha.shape[-1] == channels and channels != 1:
        space = ctx.space("channels", channels, "norm")
        ctx.couple(ctx.inputs[0], space)
        ctx.slice(alpha, -1, space)
    return [ctx.inputs[0]]


def rescaling(ctx: RuleContext) -> list:
    if all(np.size(ctx.config(key)) == 1 for key in ("scale", "offset")):
        return [ctx.inputs[0]]
    return ctx.barrier()


def convolution(ctx: RuleContext) -> list:
    """Conv1D/2D/3D, grouped or not: output channels are new; input channels follow the input."""
    if not _channels_last(ctx):
        return ctx.barrier()
    layer = ctx.layer
    groups = int(ctx.config("groups", 1) or 1)
    channels = ctx.input_shapes[0][-1]
    filters = layer.filters
    if groups > 1 and channels == groups:
        # One input channel per group (depthwise as a grouped convolution): whole groups go.
        inputs = ctx.space("in", channels, "depthwise")
        ctx.couple(ctx.inputs[0], inputs)
        outputs = np.repeat(inputs, filters // groups)
        ctx.edit("groups", inputs)
    else:
        ctx.slice(layer.kernel, -2, ctx.space("in", channels // groups, "in"))
        # A grouped convolution keeps its group count: channel j of every group goes together.
        ctx.couple(ctx.inputs[0], np.tile(ctx.space("in", channels // groups, "in"), groups))
        outputs = np.tile(ctx.space("out", filters // groups, "out"), groups)
    ctx.slice(layer.kernel, -1, outputs)
    ctx.slice(layer.bias, 0, outputs)
    ctx.edit("filters", outputs)
    if _softmax(ctx.config("activation")):
        ctx.fix(outputs)
    return [outputs]


def transposed_convolution(ctx: RuleContext) -> list:
    if not _channels_last(ctx):
        return ctx.barrier()
    layer = ctx.layer
    inputs = ctx.space("in", ctx.input_shapes[0][-1], "in")
    ctx.couple(ctx.inputs[0], inputs)
    outputs = ctx.space("out", layer.filters, "out")
    ctx.slice(layer.kernel, -1, inputs)
    ctx.slice(layer.kernel, -2, outputs)
    ctx.slice(layer.bias, 0, outputs)
    ctx.edit("filters", outputs)
    if _softmax(ctx.config("activation")):
        ctx.fix(outputs)
    return [outputs]


def depthwise(ctx: RuleContext) -> list:
    """Depthwise convolution: each output channel follows its input channel (times the multiplier)."""
    if not _channels_last(ctx):
        return ctx.barrier()
    layer = ctx.layer
    channels = ctx.space("in", ctx.input_shapes[0][-1], "depthwise")
    ctx.couple(ctx.inputs[0], channels)
    outputs = np.repeat(channels, layer.depth_multiplier)
    ctx.slice(layer.kernel, -2, channels)
    ctx.slice(layer.bias, 0, outputs)
    return [outputs]


def separable(ctx: RuleContext) -> list:
    if not _channels_last(ctx):
        return ctx.barrier()
    layer = ctx.layer
    channels = ctx.space("in", ctx.input_shapes[0][-1], "depthwise")
    ctx.couple(ctx.inputs[0], channels)
    outputs = ctx.space("out", layer.filters, "out")
    ctx.slice(layer.depthwise_kernel, -2, channels)
    ctx.slice(layer.pointwise_kernel, -2, np.repeat(channels, layer.depth_multiplier))
    ctx.slice(layer.pointwise_kernel, -1, outputs)
    ctx.slice(layer.bias, 0, outputs)
    ctx.edit("filters", outputs)
    return [outputs]


def dense(ctx: RuleContext) -> list:
    layer = ctx.layer
    inputs = ctx.space("in", ctx.input_shapes[0][-1], "in")
    ctx.couple(ctx.inputs[0], inputs)
    outputs = ctx.space("out", layer.units, "out")
    ctx.slice(layer.kernel, 0, inputs)
    ctx.slice(layer.kernel, 1, outputs)
    ctx.slice(layer.bias, 0, outputs)
    ctx.edit("units", outputs)
    if _softmax(ctx.config("activation")):
        ctx.fix(outputs)
    return [outputs]


def batch_normalization(ctx: RuleContext) -> list:
    if not _last_axis_only(ctx, ctx.config("axis", -1)):
        return ctx.barrier()
    layer = ctx.layer
    channels = ctx.space("channels", ctx.input_shapes[0][-1], "norm")
    ctx.couple(ctx.inputs[0], channels)
    for variable in (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance):
        ctx.slice(variable, 0, channels)
    return [ctx.inputs[0]]


def layer_normalization(ctx: RuleContext) -> list:
    if not _last_axis_only(ctx, ctx.config("axis", -1)):
        return ctx.barrier()
    layer = ctx.layer
    channels = ctx.space("channels", ctx.input_shapes[0][-1], "norm")
    ctx.couple(ctx.inputs[0], channels)
    ctx.slice(layer.gamma, 0, channels)
    ctx.slice(layer.beta, 0, channels)
    return [ctx.inputs[0]]


def group_normalization(ctx: RuleContext) -> list:
    """Channel j of every normalization group goes together, so the groups stay equal in size."""
    if not _last_axis_only(ctx, ctx.config("axis", -1)):
        return ctx.barrier()
    layer = ctx.layer
    size = ctx.input_shapes[0][-1]
    groups = layer.groups if layer.groups != -1 else size
    if groups == size and groups != 1:
        # One channel per group: any channel may go, the group count follows.
        channels = ctx.space("channels", size, "norm")
        ctx.couple(ctx.inputs[0], channels)
        if layer.groups != -1:
            ctx.edit("groups", channels)
    else:
        local = ctx.space("channels", size // groups, "norm")
        channels = np.tile(local, groups)
        ctx.couple(ctx.inputs[0], channels)
    ctx.slice(layer.gamma, 0, channels)
    ctx.slice(layer.beta, 0, channels)
    return [ctx.inputs[0]]


def merge(ctx: RuleContext) -> list:
    """Add, Subtract, Multiply, Average, Maximum, Minimum: every input's channels are one."""
    widths = [channel_count(shape) for shape in ctx.input_shapes]
    width = channel_count(ctx.output_shapes[0])
    full = [atoms for atoms, w in zip(ctx.inputs, widths) if w == width]
    for atoms, w in zip(ctx.inputs, widths):
        if w == width:
            ctx.couple(full[0], atoms)
        else:  # broadcast along channels (one channel): keep it whole
            ctx.fix(atoms)
    for atoms in ctx.inputs:
        ctx.mark("merge", atoms)
    return [full[0]]


def concatenate(ctx: RuleContext) -> list:
    """Channel offsets into each source along the last axis; any other axis couples the inputs."""
    rank = len(ctx.output_shapes[0])
    for atoms in ctx.inputs:
        ctx.mark("concat", atoms)
    if ctx.config("axis", -1) % rank == rank - 1:
        return [np.concatenate(ctx.inputs)]
    for atoms in ctx.inputs[1:]:
        ctx.couple(ctx.inputs[0], atoms)
    return [ctx.inputs[0]]


def flatten(ctx: RuleContext) -> list:
    """Each channel maps to one Dense input per position (row-major, channels last)."""
    shape = ctx.input_shapes[0]
    if not _channels_last(ctx) or len(shape) < 2:
        return ctx.barrier()
    positions = math.prod(shape[1:-1])
    ctx.mark("flatten", ctx.inputs[0])
    return [np.tile(ctx.inputs[0], positions)]


def reshape(ctx: RuleContext) -> list:
    """Reshapes that keep the channel axis last, or flatten everything after the batch axis."""
    source, target = ctx.input_shapes[0], ctx.output_shapes[0]
    atoms = ctx.inputs[0]
    old = list(ctx.config("target_shape"))
    if target[-1] == source[-1] and len(source) > 1:
        ctx.mark("reshape", atoms)
        if old[-1] != -1:
            ctx.edit("target_shape", atoms, lambda kept, old: [*old[:-1], kept])
        return [atoms]
    if len(target) == 2 and target[-1] == math.prod(source[1:]):
        flat = np.tile(atoms, math.prod(source[1:-1]))
        ctx.mark("reshape", atoms)
        if old[-1] != -1:
            ctx.edit("target_shape", flat, lambda kept, old: [kept])
        return [flat]
    return ctx.barrier()


def permute(ctx: RuleContext) -> list:
    dims = list(ctx.config("dims"))
    if dims[-1] == len(dims):
        return [ctx.inputs[0]]
    return ctx.barrier()


def embedding(ctx: RuleContext) -> list:
    ctx.fix(ctx.inputs[0])
    outputs = ctx.space("out", ctx.layer.output_dim, "out")
    ctx.slice(ctx.layer.embeddings, 1, outputs)
    ctx.edit("output_dim", outputs)
    return [outputs]


def recurrent(ctx: RuleContext) -> list:
    """LSTM (4 gates), GRU (3) and SimpleRNN (1): each unit's gate blocks go together."""
    layer = ctx.layer
    cell = layer.cell
    gates = 4 if isinstance(layer, L.LSTM) else 3 if isinstance(layer, L.GRU) else 1
    inputs = ctx.space("in", ctx.input_shapes[0][-1], "in")
    ctx.couple(ctx.inputs[0], inputs)
    for atoms in ctx.inputs[1:]:  # initial states
        ctx.fix(atoms)
    units = ctx.space("out", layer.units, "out")
    blocks = np.tile(units, gates)
    ctx.slice(cell.kernel, 0, inputs)
    ctx.slice(cell.kernel, 1, blocks)
    ctx.slice(cell.recurrent_kernel, 0, units)
    ctx.slice(cell.recurrent_kernel, 1, blocks)
    ctx.slice(getattr(cell, "bias", None), -1, blocks)
    ctx.edit("units", units)
    return [units for _ in ctx.output_shapes]


def bidirectional(ctx: RuleContext) -> list:
    """A Bidirectional LSTM, GRU or SimpleRNN: both directions lose the same units."""
    layer = ctx.layer
    forward, backward = layer.forward_layer, layer.backward_layer
    recurrent_types = (L.LSTM, L.GRU, L.SimpleRNN)
    if (
        not isinstance(forward, recurrent_types)
        or type(forward) is not type(backward)
        or forward.units != backward.units
        or layer.merge_mode is None
        or len(ctx.inputs) != 1
    ):
        return ctx.barrier()
    gates = 4 if isinstance(forward, L.LSTM) else 3 if isinstance(forward, L.GRU) else 1
    inputs = ctx.space("in", ctx.input_shapes[0][-1], "in")
    ctx.couple(ctx.inputs[0], inputs)
    units = ctx.space("out", forward.units, "out")
    blocks = np.tile(units, gates)
    for direction in (forward, backward):
        cell = direction.cell
        ctx.slice(cell.kernel, 0, inputs)
        ctx.slice(cell.kernel, 1, blocks)
        ctx.slice(cell.recurrent_kernel, 0, units)
        ctx.slice(cell.recurrent_kernel, 1, blocks)
        ctx.slice(getattr(cell, "bias", None), -1, blocks)

    def with_units(kept, old):
        return {**old, "config": {**old["config"], "units": kept}}

    ctx.edit("layer", units, with_units)
    if ctx.config("backward_layer") is not None:
        ctx.edit("backward_layer", units, with_units)
    output = np.concatenate([units, units]) if layer.merge_mode == "concat" else units
    return [output] + [units for _ in ctx.output_shapes[1:]]


def multi_head_attention(ctx: RuleContext) -> list:
    """Whole heads, each head's key dimension and value dimension; queries set the output width."""
    layer = ctx.layer
    query = ctx.args[0]
    value = ctx.args[1] if len(ctx.args) > 1 else ctx.kwargs["value"]
    key = ctx.args[2] if len(ctx.args) > 2 else ctx.kwargs.get("key")
    key = value if key is None else key
    for name, atoms in ctx.kwargs.items():
        if name not in ("value", "key") and isinstance(atoms, np.ndarray):
            ctx.fix(atoms)  # masks
    q_in = ctx.space("query", len(query), "in")
    k_in = ctx.space("key", len(key), "in")
    v_in = ctx.space("value", len(value), "in")
    ctx.couple(query, q_in)
    ctx.couple(key, k_in)
    ctx.couple(value, v_in)
    heads = ctx.space("heads", layer.num_heads, "heads")
    key_dim = ctx.space("key_dim", layer.key_dim, "key_dim")
    value_dim = ctx.space("value_dim", layer.value_dim, "value_dim")
    if ctx.config("output_shape") is None:
        outputs = q_in
    else:
        outputs = ctx.fresh(channel_count(ctx.output_shapes[0]))
    for dense, inputs, per_head in (
        (layer.query_dense, q_in, key_dim),
        (layer.key_dense, k_in, key_dim),
        (layer.value_dense, v_in, value_dim),
    ):
        ctx.slice(dense.kernel, 0, inputs)
        ctx.slice(dense.kernel, 1, heads)
        ctx.slice(dense.kernel, 2, per_head)
        if dense.bias is not None:
            ctx.slice(dense.bias, 0, heads)
            ctx.slice(dense.bias, 1, per_head)
    ctx.slice(layer.output_dense.kernel, 0, heads)
    ctx.slice(layer.output_dense.kernel, 1, value_dim)
    ctx.slice(layer.output_dense.kernel, 2, outputs)
    if layer.output_dense.bias is not None:
        ctx.slice(layer.output_dense.bias, 0, outputs)
    ctx.edit("num_heads", heads)
    ctx.edit("key_dim", key_dim)
    ctx.edit("value_dim", value_dim)

    query_weights = [
        index
        for index, weight in enumerate(layer.weights)
        if weight is layer.query_dense.kernel or weight is layer.query_dense.bias
    ]
    old_key_dim = layer.key_dim

    def keep_attention_scale(weights, keep):
        # Scores are divided by sqrt(key_dim): scale the queries so removed key dimensions that
        # carried nothing leave the attention unchanged.
        factor = math.sqrt(int(keep(key_dim).sum()) / old_key_dim)
        return [w * factor if i in query_weights else w for i, w in enumerate(weights)]

    ctx.finish(keep_attention_scale)
    return [outputs] + [ctx.fresh(channel_count(shape)) for shape in ctx.output_shapes[1:]]


def channelwise(*weights: str, config_key: str | None = None) -> Rule:
    """A rule for layers that act on each channel alone with per-channel weights (a scale, a bias).

    Args:
        *weights: attribute names of the layer's per-channel weights (last axis = channels).
        config_key: a config entry that holds the channel count, if any.

    Returns:
        A rule for `register_rule`.

    Example:

    ```python
    register_rule(MyChannelScale, channelwise("scale"))
    ```
    """

    def rule(ctx: RuleContext) -> list:
        channels = ctx.space("channels", ctx.input_shapes[0][-1], "norm")
        ctx.couple(ctx.inputs[0], channels)
        for name in weights:
            ctx.slice(getattr(ctx.layer, name), -1, channels)
        if config_key is not None:
            ctx.edit(config_key, channels)
        return [ctx.inputs[0]]

    return rule


def _application_layers() -> list:
    """Custom layers of `keras.applications` (ConvNeXt's LayerScale, Inception-ResNet's scale).

    They are defined only in Keras' private application modules; this is the one place importing them.
    """
    found = []
    try:
        from keras.src.applications.convnext import LayerScale

        found.append((LayerScale, channelwise("gamma", config_key="projection_dim")))
    except ImportError:  # pragma: no cover - older or newer Keras layouts
        pass
    try:
        from keras.src.applications.inception_resnet_v2 import CustomScaleLayer

        found.append((CustomScaleLayer, merge))
    except ImportError:  # pragma: no cover
        pass
    return found


_PASSTHROUGH = (
    L.ReLU,
    L.LeakyReLU,
    L.ELU,
    L.Dropout,
    L.SpatialDropout1D,
    L.SpatialDropout2D,
    L.SpatialDropout3D,
    L.GaussianNoise,
    L.GaussianDropout,
    L.AlphaDropout,
    L.ActivityRegularization,
    L.Identity,
    L.UnitNormalization,
    L.MaxPooling1D,
    L.MaxPooling2D,
    L.MaxPooling3D,
    L.AveragePooling1D,
    L.AveragePooling2D,
    L.AveragePooling3D,
    L.GlobalMaxPooling1D,
    L.GlobalMaxPooling2D,
    L.GlobalMaxPooling3D,
    L.GlobalAveragePooling1D,
    L.GlobalAveragePooling2D,
    L.GlobalAveragePooling3D,
    L.ZeroPadding1D,
    L.ZeroPadding2D,
    L.ZeroPadding3D,
    L.Cropping1D,
    L.Cropping2D,
    L.Cropping3D,
    L.UpSampling1D,
    L.UpSampling2D,
    L.UpSampling3D,
    L.RepeatVector,
    L.Resizing,
    L.CenterCrop,
    L.RandomFlip,
    L.RandomRotation,
    L.RandomZoom,
    L.RandomTranslation,
    L.RandomCrop,
)


def operation(ctx: RuleContext) -> list:
    """`keras.ops` calls in a functional graph (`x + 3.0`, `ops.relu(x)`): elementwise, like a merge."""
    tensors = {id(atoms) for atoms in ctx.inputs}
    constants = [
        value
        for value in keras.tree.flatten((ctx.args, ctx.kwargs))
        if id(value) not in tensors and not isinstance(value, (str, bool, type(None)))
    ]
    if any(np.size(value) != 1 for value in constants):
        return ctx.barrier()  # a constant per channel cannot be sliced
    return merge(ctx)


_ELEMENTWISE_OPS = {
    "numpy": (
        "Add",
        "Subtract",
        "Multiply",
        "Divide",
        "TrueDivide",
        "Maximum",
        "Minimum",
        "Power",
        "Abs",
        "Absolute",
        "Negative",
        "Square",
        "Sqrt",
        "Exp",
        "Log",
        "Tanh",
        "Clip",
        "Sign",
        "Reciprocal",
    ),
    "nn": (
        "Relu",
        "Relu6",
        "Sigmoid",
        "HardSigmoid",
        "Silu",
        "HardSilu",
        "Gelu",
        "Elu",
        "Selu",
        "LeakyRelu",
        "Softplus",
        "Softsign",
        "Tanh",
        "Mish",
        "Celu",
    ),
}


def _elementwise_operations() -> tuple:
    """Classes of the elementwise `keras.ops` (private modules: the functional graph holds their instances).

    This is the one place naming them.
    """
    from keras.src.ops import nn, numpy

    modules = {"numpy": numpy, "nn": nn}
    found = []
    for module, names in _ELEMENTWISE_OPS.items():
        for name in names:
            cls = getattr(modules[module], name, None)
            if isinstance(cls, type):
                found.append(cls)
    return tuple(found)


def builtin_rules() -> list:
    """(layer class, rule) pairs for Keras' own layers; the first `isinstance` match wins."""
    rules = [(cls, passthrough) for cls in _PASSTHROUGH]
    rules += [
        (L.Activation, activation),
        (L.Softmax, softmax),
        (L.PReLU, prelu),
        (L.Rescaling, rescaling),
        (L.Conv1DTranspose, transposed_convolution),
        (L.Conv2DTranspose, transposed_convolution),
        (L.Conv3DTranspose, transposed_convolution),
        (L.DepthwiseConv1D, depthwise),
        (L.DepthwiseConv2D, depthwise),
        (L.SeparableConv1D, separable),
        (L.SeparableConv2D, separable),
        (L.Conv1D, convolution),
        (L.Conv2D, convolution),
        (L.Conv3D, convolution),
        (L.Dense, dense),
        (L.BatchNormalization, batch_normalization),
        (L.LayerNormalization, layer_normalization),
        (L.GroupNormalization, group_normalization),
        (L.Add, merge),
        (L.Subtract, merge),
        (L.Multiply, merge),
        (L.Average, merge),
        (L.Maximum, merge),
        (L.Minimum, merge),
        (L.Concatenate, concatenate),
        (L.Flatten, flatten),
        (L.Reshape, reshape),
        (L.Permute, permute),
        (L.Embedding, embedding),
        (L.LSTM, recurrent),
        (L.GRU, recurrent),
        (L.SimpleRNN, recurrent),
        (L.MultiHeadAttention, multi_head_attention),
        (L.Bidirectional, bidirectional),
    ]
    rules += [(cls, operation) for cls in _elementwise_operations()]
    return _application_layers() + rules


def keep_whole(ctx: RuleContext) -> list:
    """Keras' own layers and operations without a rule of their own: channels on both sides stay."""
    return ctx.barrier()


def find_rule(layer, registered: dict) -> Rule | None:
    """The rule for `layer`: a registered one for its class or a base class first, then Keras' own.

    Keras' own layers and operations without a channel rule keep their channels whole (always correct,
    never smaller); a Lambda or a custom layer without a registered rule has none (refused).
    """
    for cls in type(layer).__mro__:
        if cls in registered:
            return registered[cls]
    if isinstance(layer, L.Lambda):
        return None
    for cls, rule in builtin_rules():
        if isinstance(layer, cls):
            return rule
    if type(layer).__module__.startswith("keras."):
        return keep_whole
    return None
