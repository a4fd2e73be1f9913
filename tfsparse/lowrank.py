"""`factorize`: Dense, 1x1 convolution and EinsumDense kernels replaced by two thinner layers (SVD).

A kernel W (inputs x outputs) is split as W ~= A @ B with A = U_r sqrt(S_r) and B = sqrt(S_r) V_r^T,
from its singular value decomposition truncated to rank r. The layer becomes two ordinary Keras
layers of the same kind: the first (named "<layer>_lowrank", no bias, no activation) maps to r
channels, the second keeps the layer's name, bias and activation. Parameters drop from
in * out to r * (in + out); fine-tune afterwards.
"""

from __future__ import annotations

import copy
import dataclasses

import keras
import numpy as np

from tfsparse.analysis.report import format_table

__all__ = ["Factorization", "FactorizedLayer", "choose_rank", "factorize", "split_kernel"]


@dataclasses.dataclass(frozen=True)
class FactorizedLayer:
    """What `factorize` did to one layer: its rank and the parameters and FLOPs before and after."""

    name: str
    kind: str
    kernel_shape: tuple[int, ...]
    rank: int
    energy: float
    parameters_before: int
    parameters_after: int
    flops_before: int
    flops_after: int

    @property
    def parameters_saved(self) -> int:
        return self.parameters_before - self.parameters_after

    @property
    def flops_saved(self) -> int:
        return self.flops_before - self.flops_after


@dataclasses.dataclass(frozen=True)
class Factorization:
    """The factorized model and one `FactorizedLayer` per layer that was split."""

    model: keras.Model
    layers: tuple[FactorizedLayer, ...]

    def table(self) -> str:
        """A text table of the layers: rank, kept energy, parameters and FLOPs before and after."""
        cells = [
            [
                row.name,
                row.kind,
                "x".join(map(str, row.kernel_shape)),
                str(row.rank),
                f"{row.energy:.1%}",
                f"{row.parameters_before:,} -> {row.parameters_after:,}",
                f"{row.flops_before:,} -> {row.flops_after:,}",
            ]
            for row in self.layers
        ]
        headers = ["Layer", "Kind", "Kernel", "Rank", "Energy kept", "Parameters", "FLOPs"]
        return format_table(headers, cells, right=(3, 4, 5, 6))

    def __str__(self) -> str:
        return self.table()


def _pointwise_convolution(layer) -> bool:
    return (
        isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D))
        and all(size == 1 for size in layer.kernel_size)
        and layer.groups == 1
        and layer.data_format == "channels_last"
    )


def _einsum_parts(layer) -> tuple[str, str, str] | None:
    """(input, kernel, output) subscripts of an EinsumDense whose 2-D kernel maps its input's
    contracted axis to the output's last axis; None for any other equation."""
    inputs, rest = layer.equation.split(",")
    kernel, output = rest.split("->")
    if len(kernel) != 2 or layer.kernel.ndim != 2:
        return None
    contracted, produced = kernel
    if contracted in output or contracted not in inputs or output[-1] != produced or produced in inputs:
        return None
    return inputs, kernel, output


def _kind(layer) -> str | None:
    if isinstance(layer, keras.layers.Dense):
        return "Dense"
    if _pointwise_convolution(layer):
        return "1x1 " + type(layer).__name__
    if isinstance(layer, keras.layers.EinsumDense) and _einsum_parts(layer) is not None:
        return "EinsumDense"
    return None


def choose_rank(singular_values: np.ndarray, rank: int | None, energy: float | None) -> int:
    """The rank to keep: `rank` (at most the number of singular values), or the fewest singular
    values whose squares hold `energy` of the total.

    Args:
        singular_values: in decreasing order.
        rank: a fixed rank, or None.
        energy: a share in (0, 1], or None.

    Returns:
        The rank, at least 1.

    Example:

    ```python
    choose_rank(np.array([3.0, 1.0, 0.1]), None, 0.9)  # 1
    ```
    """
    if rank is not None:
        return int(min(rank, len(singular_values)))
    if energy >= 1.0:
        return len(singular_values)
    shares = np.cumsum(singular_values**2) / max(float(np.sum(singular_values**2)), 1e-30)
    return int(min(np.searchsorted(shares, energy) + 1, len(singular_values)))


def split_kernel(
    kernel: np.ndarray, rank: int | None, energy: float | None
) -> tuple[np.ndarray, np.ndarray, float]:
    """`kernel` (inputs x outputs) as A (inputs x r) @ B (r x outputs), and the share of energy kept.

    Args:
        kernel: a 2-D kernel.
        rank: a fixed rank, or None.
        energy: a share in (0, 1], or None.

    Returns:
        `(A, B, energy kept)`.

    Example:

    ```python
    a, b, kept = split_kernel(layer.kernel.numpy(), rank=8, energy=None)
    ```
    """
    u, s, vt = np.linalg.svd(np.asarray(kernel, dtype="float64"), full_matrices=False)
    r = choose_rank(s, rank, energy)
    root = np.sqrt(s[:r])
    kept = float(np.sum(s[:r] ** 2) / max(np.sum(s**2), 1e-30))
    return (u[:, :r] * root).astype("float32"), (root[:, None] * vt[:r]).astype("float32"), kept


def _layer_entry(layer: keras.layers.Layer, config: dict) -> dict:
    # The layer's own serialization names its class (and registration, for subclasses).
    entry = keras.saving.serialize_keras_object(layer)
    return {key: entry.get(key) for key in ("module", "class_name", "registered_name")} | {"config": config}


def _pair(layer, rank: int) -> tuple[dict, dict]:
    """Configs of the two layers that replace `layer`: to `rank` channels, then to its outputs."""
    name = layer.name
    base = layer.get_config()
    first = dict(base, name=f"{name}_lowrank", activation="linear")
    if not isinstance(layer, keras.layers.EinsumDense):
        first["use_bias"] = False
    second = dict(base)
    if isinstance(layer, keras.layers.Dense):
        first["units"] = rank
    elif isinstance(layer, keras.layers.EinsumDense):
        inputs, kernel, output = _einsum_parts(layer)
        letter = next(c for c in "zyxwvutsrqponmlkjihgfedcba" if c not in inputs + kernel + output)
        output_shape = (
            list(base["output_shape"])
            if isinstance(base["output_shape"], (list, tuple))
            else [base["output_shape"]]
        )
        first.update(
            equation=f"{inputs},{kernel[0]}{letter}->{output[:-1]}{letter}",
            output_shape=[*output_shape[:-1], rank],
            bias_axes=None,
        )
        second["equation"] = f"{output[:-1]}{letter},{letter}{kernel[1]}->{output}"
    else:  # 1x1 convolution: the first keeps strides and padding, the second is 1x1 stride 1
        first["filters"] = rank
        second.update(
            strides=(1,) * len(layer.kernel_size),
            padding="valid",
            dilation_rate=(1,) * len(layer.kernel_size),
        )
    return _layer_entry(layer, first), _layer_entry(layer, second)


def _split_weights(layer, a: np.ndarray, b: np.ndarray) -> tuple[list, list]:
    kernel_shape = tuple(layer.kernel.shape)
    if _pointwise_convolution(layer):
        ones = kernel_shape[:-2]
        a, b = a.reshape(*ones, *a.shape), b.reshape(*ones, *b.shape)
    second = [b] + ([np.asarray(layer.bias)] if getattr(layer, "bias", None) is not None else [])
    return [a], second


def replace_with_pairs(
    model: keras.Model, pairs: dict[str, tuple[dict, dict]], weights: dict[str, list]
) -> keras.Model:
    """Model surgery: each layer named in `pairs` becomes two layers in a row, the second keeping
    its name; every other layer keeps its config and weights.

    Edits the functional config and rebuilds it with `tfsparse.structured.surgery` (STYLE rule 13:
    edit configs, rebuild with `from_config`, set weights by layer name).

    Args:
        model: a functional model whose layers are each called once.
        pairs: layer name -> (first layer entry, second layer entry), entries as in a functional
            config ("module", "class_name", "config"); the first's config names it.
        weights: layer name -> weights, for the new layers (by their names).

    Returns:
        The rebuilt functional model.

    Example:

    ```python
    rebuilt = replace_with_pairs(model, {"dense": (first, second)}, {"dense_lowrank": [a], "dense": [b, bias]})
    ```
    """
    from tfsparse.structured import surgery

    config = surgery.model_config(model)
    layers = []
    for entry in config["config"]["layers"]:
        name = entry["config"]["name"]
        if name not in pairs:
            layers.append(entry)
            continue
        first, second = (copy.deepcopy(part) for part in pairs[name])
        first_name = first["config"]["name"]
        first.update(name=first_name, inbound_nodes=entry["inbound_nodes"])
        tensor = {
            "class_name": "__keras_tensor__",
            "config": {
                "shape": list(model.get_layer(name).output.shape),
                "dtype": "float32",
                "keras_history": [first_name, 0, 0],
            },
        }
        second.update(name=name, inbound_nodes=[{"args": [tensor], "kwargs": {}}])
        layers += [first, second]
    config["config"]["layers"] = layers
    values = surgery.layer_weights(model) | dict(weights)
    return surgery.rebuild(config, values, surgery.custom_objects(model))


def _check(model, rank, energy, layers) -> None:
    if not isinstance(model, keras.Model):
        raise ValueError(f"Argument `model` must be a Keras model. Received: model={model!r}")
    if (rank is None) == (energy is None):
        raise ValueError(
            f"Pass exactly one of `rank` and `energy`. Received: rank={rank!r}, energy={energy!r}. "
            "E.g. `factorize(model, energy=0.95)` keeps 95% of each kernel's squared singular values."
        )
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1):
        raise ValueError(f"Argument `rank` must be a positive integer. Received: rank={rank!r}")
    if energy is not None and (
        isinstance(energy, bool) or not isinstance(energy, (int, float)) or not 0 < energy <= 1
    ):
        raise ValueError(f"Argument `energy` must be a number in (0, 1]. Received: energy={energy!r}")
    if layers is not None and (isinstance(layers, str) or not all(isinstance(name, str) for name in layers)):
        raise ValueError(f"Argument `layers` must be a list of layer names. Received: layers={layers!r}")


def factorize(
    model: keras.Model, rank: int | None = None, energy: float | None = None, layers=None
) -> Factorization:
    """Splits Dense, 1x1 convolution and EinsumDense layers into two thinner layers by SVD.

    Give `rank` (the same for every layer, capped at each kernel's smaller side) or `energy` (per
    layer, the fewest singular values whose squares hold that share; 1.0 keeps them all, and the
    outputs are unchanged up to float rounding). The result is a plain functional model of
    ordinary Keras layers: fine-tune it like any other.

    Args:
        model: a Sequential or functional model (pruned models: strip first), layers called once.
        rank: the rank to keep in every factorized layer.
        energy: the share of squared singular values to keep, in (0, 1].
        layers: names of the layers to factorize; None for every Dense, 1x1 Conv1D/2D/3D
            (channels_last, ungrouped) and EinsumDense (2-D kernel into the last output axis).

    Returns:
        A `Factorization`: `.model`, and `.layers` with the rank, parameters and FLOPs of each
        factorized layer before and after (`print(result)` shows the table).

    Raises:
        ValueError: bad arguments, a layer name that is not in the model or cannot be factorized.

    Example:

    ```python
    result = tfsparse.lowrank.factorize(model, energy=0.9)
    print(result)
    smaller = result.model
    ```
    """
    from tfsparse.analysis import flops_by_layer
    from tfsparse.export._files import plain_model

    _check(model, rank, energy, layers)
    model = plain_model(model)
    if isinstance(model, keras.Sequential):
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    names = [layer.name for layer in model.layers]
    if layers is None:
        chosen = [layer for layer in model.layers if _kind(layer) is not None]
    else:
        chosen = []
        for name in layers:
            if name not in names:
                raise ValueError(
                    f"Argument `layers` names '{name}', which is not a layer of model '{model.name}'."
                )
            layer = model.get_layer(name)
            if _kind(layer) is None:
                raise ValueError(
                    f"Layer '{name}' ({type(layer).__name__}) cannot be factorized: `factorize` splits Dense, 1x1 "
                    "convolutions (channels_last, groups=1) and EinsumDense with a 2-D kernel into the last "
                    "output axis. Leave it out of `layers`."
                )
            chosen.append(layer)
    calls = {entry["name"]: len(entry["inbound_nodes"]) for entry in model.get_config()["layers"]}
    for layer in chosen:
        if calls[layer.name] != 1:
            raise ValueError(
                f"Layer '{layer.name}' is called {calls[layer.name]} times; `factorize` splits layers called once."
            )
    pairs, weights, splits = {}, {}, {}
    for layer in chosen:
        kernel = np.asarray(layer.kernel)
        a, b, kept = split_kernel(kernel.reshape(-1, kernel.shape[-1]), rank, energy)
        pairs[layer.name] = _pair(layer, a.shape[1])
        first, second = _split_weights(layer, a, b)
        weights[f"{layer.name}_lowrank"], weights[layer.name] = first, second
        splits[layer.name] = (a.shape[1], kept)
    rebuilt = replace_with_pairs(model, pairs, weights)
    flops_before, flops_after = flops_by_layer(model), flops_by_layer(rebuilt)
    rows = []
    for layer in chosen:
        name = layer.name
        rows.append(
            FactorizedLayer(
                name=name,
                kind=_kind(layer),
                kernel_shape=tuple(layer.kernel.shape),
                rank=splits[name][0],
                energy=splits[name][1],
                parameters_before=layer.count_params(),
                parameters_after=rebuilt.get_layer(f"{name}_lowrank").count_params()
                + rebuilt.get_layer(name).count_params(),
                flops_before=flops_before.get(name, 0),
                flops_after=flops_after.get(f"{name}_lowrank", 0) + flops_after.get(name, 0),
            )
        )
    return Factorization(rebuilt, tuple(rows))
