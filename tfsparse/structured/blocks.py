"""Depth pruning: removing whole residual blocks `x + f(x)` whose skip path is an identity.

A residual block is an `Add` of a tensor `x` and a branch `f(x)` computed from `x` alone, with
`f(x)` shaped like `x`. Removing it replaces `x + f(x)` by `x`: the branch's layers and the `Add`
are deleted from the model's config, every use of the sum reads `x` instead, and the model is
rebuilt with the remaining layers' weights (see `tfsparse.structured.surgery`). What is removed is
decided first, as data (`BlockPlan`), then carried out, as for channel pruning.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable

import keras
import numpy as np

from tfsparse.structured import surgery

IMPORTANCES = ("l1", "l2", "output")


@dataclasses.dataclass(frozen=True)
class ResidualBlock:
    """One residual block `x + f(x)` of a functional model.

    Attributes:
        name: the block's name: the longest name prefix its layers share (e.g. "conv2_block2"
            in ResNet50), or the `Add` layer's name when they share none.
        add: the name of the `Add` layer that sums `x` and `f(x)`.
        skip: the name of the layer whose output is `x`.
        layers: the names of the branch's layers, in the model's order (the `Add` not included).
    """

    name: str
    add: str
    skip: str
    layers: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """Which residual blocks to remove, and every candidate's importance: plain, JSON-serializable data.

    Attributes:
        removed: names of the blocks to remove, least important first.
        scores: each candidate block's importance (the blocks kept too), by block name.
        importance: the importance the scores were computed with.
        blocks: every candidate block, by name.
    """

    removed: tuple[str, ...]
    scores: dict[str, float]
    importance: str
    blocks: dict[str, ResidualBlock]

    def to_json(self) -> str:
        """The plan as a JSON string, for `BlockPlan.from_json`.

        Example:

        ```python
        text = plan_blocks(model, n=2).to_json()
        ```
        """
        return json.dumps(
            {
                "removed": list(self.removed),
                "scores": self.scores,
                "importance": self.importance,
                "blocks": {name: dataclasses.asdict(block) for name, block in self.blocks.items()},
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> BlockPlan:
        """The plan written by `to_json`.

        Example:

        ```python
        plan = BlockPlan.from_json(open("blocks.json").read())
        ```
        """
        try:
            data = json.loads(text)
            blocks = {
                name: ResidualBlock(block["name"], block["add"], block["skip"], tuple(block["layers"]))
                for name, block in data["blocks"].items()
            }
            return cls(tuple(data["removed"]), dict(data["scores"]), data["importance"], blocks)
        except (TypeError, KeyError, ValueError) as error:
            raise ValueError(
                f"Argument `text` is not a block plan written by `BlockPlan.to_json`: {error}"
            ) from None

    def __str__(self) -> str:
        lines = [
            f"Remove {len(self.removed)} of {len(self.blocks)} residual blocks (importance {self.importance!r}):"
        ]
        for name, block in self.blocks.items():
            verdict = "remove" if name in self.removed else "keep  "
            lines.append(f"  {verdict} {name}: {len(block.layers)} layers, score {self.scores[name]:.4g}")
        return "\n".join(lines)


# -- reading the blocks from the config ------------------------------------------------------------


def _tensor_refs(value) -> list[tuple[str, int, int]]:
    """Every tensor reference `(layer, node, tensor)` in a serialized call's arguments."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            return [tuple(value["config"]["keras_history"])]
        return [ref for item in value.values() for ref in _tensor_refs(item)]
    if isinstance(value, (list, tuple)):
        return [ref for item in value for ref in _tensor_refs(item)]
    return []


def _tensor_shapes(value, shapes: dict) -> None:
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            shapes[tuple(value["config"]["keras_history"])] = tuple(value["config"]["shape"])
            return
        for item in value.values():
            _tensor_shapes(item, shapes)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _tensor_shapes(item, shapes)


class _Graph:
    """The call graph recorded in a functional model's config: which layer call reads which tensor."""

    def __init__(self, config: dict, adds: set[str]):
        self.order = [layer["name"] for layer in config["layers"]]
        self.calls = {layer["name"]: len(layer.get("inbound_nodes", [])) for layer in config["layers"]}
        self.inputs: dict[str, list] = {}  # layer (called once) -> tensor references it reads
        self.consumers: dict[tuple, set[str]] = {}  # tensor -> layers reading it
        self.shapes: dict[tuple, tuple] = {}
        self.add_inputs: dict[str, list] = {}
        for layer in config["layers"]:
            for node in layer.get("inbound_nodes", []):
                refs = _tensor_refs(node)
                _tensor_shapes(node, self.shapes)
                for ref in refs:
                    self.consumers.setdefault(ref, set()).add(layer["name"])
                if len(layer["inbound_nodes"]) == 1:
                    self.inputs[layer["name"]] = refs
                    if layer["name"] in adds and not node.get("kwargs"):
                        self.add_inputs[layer["name"]] = [tuple(ref) for ref in refs]
        self.outputs = {tuple(ref) for ref in _output_refs(config["output_layers"])}

    def branch(self, add: str, skip: tuple, end: tuple) -> list[str] | None:
        """The layers between tensor `skip` and tensor `end` if they read nothing but `skip` and each
        other and nothing but they and `add` reads them; None otherwise."""
        ancestors, pending = set(), [end[0]]
        while pending:
            name = pending.pop()
            if name in ancestors:
                continue
            if name not in self.inputs or self.calls[name] != 1:
                return None  # reaches a model input or a shared layer without passing through `skip`
            ancestors.add(name)
            pending.extend(ref[0] for ref in self.inputs[name] if tuple(ref) != skip)
        reads_skip = False
        for name in ancestors:
            for ref in self.inputs[name]:
                reads_skip |= tuple(ref) == skip
                if tuple(ref) != skip and ref[0] not in ancestors:
                    return None
        if not reads_skip:
            return None
        for ref, readers in self.consumers.items():
            if ref[0] not in ancestors:
                continue
            allowed = ancestors | {add} if ref == end else ancestors
            if ref in self.outputs or not readers <= allowed:
                return None
        return [name for name in self.order if name in ancestors]


def _output_refs(output_layers) -> list:
    # A single output may be stored as one reference instead of a list of them.
    if output_layers and isinstance(output_layers[0], str):
        return [output_layers]
    return list(output_layers)


def _block_name(add: str, layers: list[str]) -> str:
    # ResNet names its layers "conv2_block2_1_conv", ..., "conv2_block2_add"; ConvNeXt its branch
    # "..._stage_0_block_0_depthwise_conv", ... and the sum "add".
    for names in ([add, *layers], layers if len(layers) > 1 else []):
        prefix = os.path.commonprefix(names).rstrip("_-./") if names else ""
        if prefix:
            return prefix
    return add


def _functional_config(model) -> dict | None:
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"Argument `model` must be a Keras model. Received: model={model!r} of type {type(model).__name__}"
        )
    if isinstance(model, keras.Sequential):
        return None  # a stack of layers has no residual connections
    config = model.get_config()
    if not isinstance(config, dict) or "layers" not in config or "output_layers" not in config:
        raise ValueError(
            f"Argument `model`: '{model.name}' ({type(model).__name__}) is a subclassed model, whose "
            "layer graph tfsparse cannot read. Rebuild it functionally: "
            "`inputs = keras.Input(shape); model = keras.Model(inputs, outputs)`."
        )
    return config


def _is_add(operation, layer_config: dict) -> bool:
    # `keras.layers.Add`, or `x + y` on symbolic tensors, which records a `keras.ops` Add operation
    # (ConvNeXt's blocks); that class is not public, so it is recognised by its serialized name.
    if isinstance(operation, keras.layers.Add):
        return True
    return layer_config.get("class_name") == "Add" and str(layer_config.get("module", "")).startswith(
        "keras.src.ops"
    )


def _graph(model: keras.Model, config: dict) -> _Graph:
    operations = {operation.name: operation for operation in model.operations}
    adds = {layer["name"] for layer in config["layers"] if _is_add(operations.get(layer["name"]), layer)}
    return _Graph(config, adds)


def residual_blocks(model: keras.Model) -> list[ResidualBlock]:
    """Every residual block `x + f(x)` of the model's top-level graph whose skip path is an identity.

    A block qualifies when its `Add` layer sums exactly two tensors `x` and `f(x)` of the same
    shape, every layer of the branch `f` reads only `x` or other branch layers and is called once,
    and nothing outside the block reads the branch's tensors. Blocks with a projection on the skip
    path (a strided or widening convolution) do not qualify: they change the shape. Blocks inside
    a nested model are not searched.

    Args:
        model: a Sequential or functional Keras model.

    Returns:
        The blocks, in the model's layer order (none for a Sequential model).

    Example:

    ```python
    blocks = residual_blocks(keras.applications.ResNet50(weights=None))
    print([block.name for block in blocks])  # ['conv2_block2', 'conv2_block3', 'conv3_block2', ...]
    ```
    """
    config = _functional_config(model)
    if config is None:
        return []
    graph = _graph(model, config)
    blocks = []
    for add in graph.order:
        refs = graph.add_inputs.get(add)
        if not refs or len(refs) != 2 or graph.shapes.get(refs[0]) != graph.shapes.get(refs[1]):
            continue
        for skip, end in (refs, refs[::-1]):
            layers = graph.branch(add, skip, end)
            if layers:
                name = _block_name(add, layers)
                if name in {block.name for block in blocks}:
                    name = add
                blocks.append(ResidualBlock(name, add, skip[0], tuple(layers)))
                break
    return blocks


# -- scoring ---------------------------------------------------------------------------------------


def _weight_scores(model: keras.Model, blocks, norm: str) -> list[float]:
    """The product over the branch's layers of each layer's mean |w| ("l1") or RMS ("l2").

    A rough gain of the branch: it is zero as soon as one of its layers is all zeros, which then
    makes the block add nothing.
    """
    operations = {operation.name: operation for operation in model.operations}
    scores = []
    for block in blocks:
        score = 1.0
        for name in block.layers:
            values = [
                keras.ops.convert_to_numpy(v.value)
                for v in getattr(operations[name], "trainable_weights", [])
            ]
            if not values:
                continue
            flat = np.concatenate([np.ravel(value).astype(np.float64) for value in values])
            score *= float(np.mean(np.abs(flat)) if norm == "l1" else np.sqrt(np.mean(flat**2)))
        scores.append(score)
    return scores


def _skip_first(layers: dict, block: ResidualBlock) -> bool:
    """Whether `x` is the first of the block's `Add` inputs (they come in either order)."""
    return _tensor_refs(layers[block.add]["inbound_nodes"][0])[0][0] == block.skip


def _output_scores(model: keras.Model, blocks, data) -> list[float]:
    """||f(x)|| / ||x|| on `data`, averaged over samples: how much each branch changes its input."""
    if data is None:
        raise ValueError(
            'Argument `data` is required with importance="output": the branches are run on it. '
            "Pass a few batches of inputs, e.g. `data=x_train[:256]`."
        )
    layers = {layer["name"]: layer for layer in model.get_config()["layers"]}
    operations = {operation.name: operation for operation in model.operations}
    tensors = []
    for block in blocks:
        first, second = operations[block.add].input
        tensors += [first, second] if _skip_first(layers, block) else [second, first]
    probe = keras.Model(model.inputs, tensors)
    values = probe.predict(data, verbose=0)
    scores = []
    for skip, branch in zip(values[::2], values[1::2]):
        axes = tuple(range(1, skip.ndim))
        ratio = np.sqrt(np.sum(branch.astype(np.float64) ** 2, axis=axes)) / (
            np.sqrt(np.sum(skip.astype(np.float64) ** 2, axis=axes)) + 1e-12
        )
        scores.append(float(np.mean(ratio)))
    return scores


def _check_count(n, ratio, candidates: int) -> int:
    if (n is None) == (ratio is None):
        raise ValueError(
            f"Pass exactly one of `n` (how many blocks to remove) and `ratio` (the share of them). "
            f"Received: n={n!r}, ratio={ratio!r}"
        )
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= candidates:
            raise ValueError(
                f"Argument `n` must be an integer from 0 to the number of removable residual blocks "
                f"({candidates}). Received: n={n!r}"
            )
        return int(n)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
        raise ValueError(f"Argument `ratio` must be a number in [0, 1]. Received: ratio={ratio!r}")
    return int(math.floor(ratio * candidates + 0.5))


def plan_blocks(
    model: keras.Model,
    n: int | None = None,
    ratio: float | None = None,
    importance: str | Callable = "l2",
    data=None,
) -> BlockPlan:
    """Decides which residual blocks to remove: the `n` (or `ratio` of the) least important ones.

    Candidates are the blocks `residual_blocks(model)` finds. Ties in importance go to the
    block that comes first in the model. Blocks nested in another candidate are never removed
    together with it.

    Args:
        model: a functional Keras model.
        n: how many blocks to remove.
        ratio: the share of the candidate blocks to remove, in [0, 1] (rounded to a count);
            pass `n` or `ratio`, not both.
        importance: "l1" or "l2" (the product over the branch's layers of their weights' mean
            absolute value or root mean square: zero when a layer of the branch is all zeros),
            "output" (||f(x)|| / ||x|| measured on `data`: how much the branch changes the
            signal), or a callable `(model, block) -> float`.
        data: inputs of the model, for importance "output".

    Returns:
        A `BlockPlan`; `apply_blocks(model, plan)` carries it out.

    Example:

    ```python
    plan = plan_blocks(model, n=2)
    print(plan)  # which blocks go, and every block's score
    shallower = apply_blocks(model, plan)
    ```
    """
    blocks = residual_blocks(model)
    count = _check_count(n, ratio, len(blocks))
    if count and not blocks:
        raise ValueError(
            f"Model '{model.name}' has no residual block with an identity skip path (an `Add` of `x` "
            "and a branch computed from `x` alone, of the same shape) to remove."
        )
    if callable(importance):
        name = getattr(importance, "__name__", type(importance).__name__)
        scores = [float(importance(model, block)) for block in blocks]
    elif isinstance(importance, str) and importance in IMPORTANCES:
        name = importance
        scores = (
            _output_scores(model, blocks, data)
            if importance == "output"
            else _weight_scores(model, blocks, importance)
        )
    else:
        raise ValueError(
            f"Argument `importance` must be one of {IMPORTANCES} or a callable (model, block) -> float. "
            f"Received: importance={importance!r}"
        )
    ranked = sorted(range(len(blocks)), key=lambda index: (scores[index], index))
    removed, covered = [], set()
    for index in ranked:
        if len(removed) == count:
            break
        block = blocks[index]
        own = {block.add, *block.layers}
        if own & covered:
            continue  # inside (or around) a block already chosen
        removed.append(block.name)
        covered |= own
    return BlockPlan(
        removed=tuple(removed),
        scores={block.name: score for block, score in zip(blocks, scores)},
        importance=name,
        blocks={block.name: block for block in blocks},
    )


# -- carrying it out -------------------------------------------------------------------------------


def _replace_refs(value, replacement: dict) -> None:
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            history = value["config"]["keras_history"]
            if history[0] in replacement:
                value["config"]["keras_history"] = list(replacement[history[0]])
            return
        for item in value.values():
            _replace_refs(item, replacement)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if (
                isinstance(item, list)
                and len(item) == 3
                and isinstance(item[0], str)
                and item[0] in replacement
            ):
                value[index] = list(replacement[item[0]])  # an output reference
            else:
                _replace_refs(item, replacement)


def without_blocks(config: dict, blocks) -> dict:
    """A functional model's config with `blocks` removed: each `x + f(x)` becomes `x`.

    Pure data in, data out: the branch layers and the `Add` are dropped and every reference to the
    sum points at `x` instead (following chains, where one removed block's `x` is another's sum).
    """
    config = json.loads(json.dumps(config))
    by_name = {layer["name"]: layer for layer in config["layers"]}
    replacement = {}
    for block in blocks:
        first, second = _tensor_refs(by_name[block.add]["inbound_nodes"][0])
        replacement[block.add] = first if first[0] == block.skip else second
    for add, ref in replacement.items():
        while ref[0] in replacement:
            ref = replacement[ref[0]]
        replacement[add] = ref
    gone = {name for block in blocks for name in (block.add, *block.layers)}
    config["layers"] = [layer for layer in config["layers"] if layer["name"] not in gone]
    for layer in config["layers"]:
        _replace_refs(layer.get("inbound_nodes", []), replacement)
    if config["output_layers"] and isinstance(config["output_layers"][0], str):
        name = config["output_layers"][0]
        if name in replacement:
            config["output_layers"] = list(replacement[name])
    else:
        _replace_refs(config["output_layers"], replacement)
    return config


def apply_blocks(model: keras.Model, plan: BlockPlan) -> keras.Model:
    """Removes the blocks `plan` names from `model`, returning a new model; `model` is unchanged.

    The result is an ordinary Keras model with the same inputs and outputs; every remaining layer
    keeps its name and weights.

    Args:
        model: the model the plan was made for.
        plan: a `BlockPlan` from `plan_blocks` (or `BlockPlan.from_json`).

    Returns:
        The shallower model.

    Example:

    ```python
    shallower = apply_blocks(model, plan_blocks(model, ratio=0.25))
    ```
    """
    if not isinstance(plan, BlockPlan):
        raise ValueError(f"Argument `plan` must be a `BlockPlan` from `plan_blocks`. Received: plan={plan!r}")
    found = {block.name: block for block in residual_blocks(model)}
    for name in plan.removed:
        if found.get(name) != plan.blocks.get(name):
            raise ValueError(
                f"Argument `plan` removes block {name!r}, which model '{model.name}' does not have as "
                "planned; make the plan for this model with `plan_blocks(model, ...)`."
            )
    config = surgery.model_config(model)
    if plan.removed:
        config["config"] = without_blocks(config["config"], [found[name] for name in plan.removed])
    return surgery.rebuild(config, surgery.layer_weights(model))


def prune_blocks(
    model: keras.Model,
    n: int | None = None,
    ratio: float | None = None,
    importance: str | Callable = "l2",
    data=None,
) -> keras.Model:
    """Removes the `n` (or `ratio` of the) least important residual blocks: `apply_blocks(model,
    plan_blocks(model, ...))`.

    To see which blocks go, make the plan yourself: `plan = plan_blocks(model, n=2)`;
    `plan.removed` names them and `print(plan)` lists every block's score. Layer names are kept,
    so the removed blocks' layers are exactly those missing from the result.

    Args:
        model: a functional Keras model.
        n: how many blocks to remove.
        ratio: the share of the removable blocks to remove, in [0, 1].
        importance: "l1", "l2", "output" (needs `data`) or a callable; see `plan_blocks`.
        data: inputs of the model, for importance "output".

    Returns:
        A new, shallower Keras model with the same inputs and outputs.

    Example:

    ```python
    shallower = tfsparse.structured.prune_blocks(keras.applications.ResNet50(weights=None), n=4)
    ```
    """
    return apply_blocks(model, plan_blocks(model, n=n, ratio=ratio, importance=importance, data=data))
