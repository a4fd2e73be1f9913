"""The channel dependency graph: which channels of which layers must be removed together.

`DependencyGraph(model)` follows every call in a Sequential or functional model (nested models
included) through the rules of `tfsparse.structured.rules`, and splits the model's channels into
groups: removing channel `i` of a group removes it from every member of the group at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np

from tfsparse.structured import rules as rules_module
from tfsparse.structured.context import SOURCE_KINDS, Atoms, LayerRecord, RuleContext, Space
from tfsparse.wrapper import PruneLowMagnitude

_REGISTERED: dict = {}


def register_rule(layer_class: type, rule) -> None:
    """Declares how a custom layer's channels couple, for every graph built afterwards.

    Like Keras' registry of serializable classes, registrations are process-wide; a subclass of
    `layer_class` uses the rule too unless it has its own.

    Args:
        layer_class: a `keras.layers.Layer` subclass.
        rule: `rule(ctx)` with a `tfsparse.structured.rules.RuleContext`; returns the atoms of each
            output (see `rules.passthrough`, `rules.dense` for examples).

    Returns:
        None.

    Example:

    ```python
    structured.register_rule(MyChannelScale, structured.rules.channelwise("scale"))
    ```
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.layers.Layer)):
        raise ValueError(
            f"Argument `layer_class` must be a keras.layers.Layer subclass. Received: layer_class={layer_class!r}"
        )
    if not callable(rule):
        raise ValueError(f"Argument `rule` must be callable. Received: rule={rule!r}")
    _REGISTERED[layer_class] = rule


@dataclass
class Member:
    """One layer's part in a group.

    Attributes:
        layer: the layer's path (`"name"`, or `"model/name"` inside a nested model).
        kind: "out" (channels it produces), "in" (channels it reads), "norm", "depthwise",
            "heads", "key_dim", "value_dim", "merge", "concat", "flatten", "reshape", "input", "fixed".
        channels: for each position of the layer's dimension, its channel in the group (-1: none).
        weights: `(weight name, axis, channels)` for each weight axis of the layer in the group.
    """

    layer: str
    kind: str
    channels: np.ndarray
    weights: list = field(default_factory=list)


@dataclass
class Group:
    """Channels that are removed together.

    Attributes:
        index: position in `graph.groups`.
        channels: how many channels the group has.
        members: the layers it spans.
        prunable: whether any channel can be removed (not tied to a model input or output, not in an
            ignored layer).
        fixed: per channel, whether it must stay.
    """

    index: int
    channels: int
    members: list
    prunable: bool
    fixed: np.ndarray

    def layers(self, kind: str | None = None) -> list[str]:
        """Names of the member layers (of one `kind` if given), in graph order, without repeats."""
        return list(dict.fromkeys(m.layer for m in self.members if kind is None or m.kind == kind))


def _graph_nodes(model: keras.Model) -> list:
    """The calls (nodes) of `model`'s own graph, inputs first.

    Keras keeps a functional model's calls, in dependency order, only in the private
    `_nodes_by_depth` (a Sequential model in its private `_functional`); this is the one place reading them.
    """
    graph = model._functional if isinstance(model, keras.Sequential) else model
    by_depth = graph._nodes_by_depth
    return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]


def _model_inputs(model: keras.Model) -> list:
    graph = model._functional if isinstance(model, keras.Sequential) else model
    return list(graph.inputs)


def _model_outputs(model: keras.Model) -> list:
    graph = model._functional if isinstance(model, keras.Sequential) else model
    return list(graph.outputs)


def _check_model(model, where: str = "") -> None:
    if isinstance(model, keras.Sequential):
        if getattr(model, "_functional", None) is None:
            raise ValueError(
                f"Sequential model '{model.name}'{where} is not built: give it a `keras.Input` first "
                "(or call `model.build(input_shape)`), then prune it."
            )
        return
    if not isinstance(model, keras.Model) or not hasattr(model, "_nodes_by_depth"):
        raise ValueError(
            f"Structured pruning reads the graph of a Sequential or functional model, but "
            f"'{getattr(model, 'name', model)}'{where} is a subclassed {type(model).__name__}. "
            "Rebuild it functionally (`keras.Model(inputs, outputs)`), then prune it."
        )


def _shape(tensor) -> tuple:
    return tuple(tensor.shape)


class DependencyGraph:
    """The groups of coupled channels of a Sequential or functional model.

    Args:
        model: a built Sequential or functional model (nested models allowed).
        ignored_layers: names (or paths "outer/inner") of layers whose own channels (outputs,
            normalized channels, heads) must not change; they may still lose input channels that the
            layers before them drop. Also the way past layers without a rule (Lambda, custom layers):
            those are kept whole on both sides.

    Attributes:
        groups: list of `Group`, in graph order.
        layers: per layer path, its `LayerRecord` (spaces, sliced weights, config edits).

    Example:

    ```python
    graph = DependencyGraph(model)
    print(graph)                    # one line per group
    graph.groups[0].members         # [Member(layer='conv2d', kind='out', ...), ...]
    ```
    """

    def __init__(self, model: keras.Model, ignored_layers=()):
        if isinstance(ignored_layers, str):
            ignored_layers = (ignored_layers,)
        _check_model(model)
        self.model = model
        self.ignored_layers = tuple(ignored_layers)
        self._atoms = Atoms()
        self.layers: dict[str, LayerRecord] = {}
        self._spaces: list[Space] = []
        self._space_ids: set[int] = set()
        self._traced: dict[int, tuple] = {}
        self._used_ignored: set[str] = set()
        inputs = []
        for tensor in _model_inputs(model):
            atoms = self._atoms.new(_last_width(tensor), fixed=True)
            self._spaces.append(Space("", "input", "input", atoms))
            inputs.append(atoms)
        for atoms in self._trace(model, "", inputs):
            self._atoms.fix(atoms)
        unknown = set(self.ignored_layers) - self._used_ignored
        if unknown:
            raise ValueError(
                f"Argument `ignored_layers` names layers that are not in model '{model.name}': "
                f"{sorted(unknown)}. Use layer names (or 'model/layer' paths for nested models)."
            )
        self._build_groups()

    # ---- tracing ----------------------------------------------------------------------------

    def _is_ignored(self, path: str, name: str) -> bool:
        for key in (path, name):
            if key in self.ignored_layers:
                self._used_ignored.add(key)
                return True
        return False

    def _trace(self, model: keras.Model, prefix: str, input_atoms: list) -> list:
        tensors = {id(t): atoms for t, atoms in zip(_model_inputs(model), input_atoms)}
        for node in _graph_nodes(model):
            layer = node.operation
            if isinstance(layer, keras.layers.InputLayer):
                continue
            atoms_of = {id(t): tensors[id(t)] for t in node.input_tensors}
            outputs = self._call(layer, prefix, node, atoms_of)
            for tensor, atoms in zip(node.outputs, outputs):
                tensors[id(tensor)] = atoms
        return [tensors[id(t)] for t in _model_outputs(model)]

    def _call(self, layer, prefix: str, node, atoms_of: dict) -> list:
        path = f"{prefix}{layer.name}"
        inputs = [atoms_of[id(t)] for t in node.input_tensors]
        if isinstance(layer, keras.Model):
            return self._call_model(layer, path, inputs)
        record = self.layers.setdefault(path, LayerRecord(path, type(layer).__name__))
        ignored = self._is_ignored(path, layer.name)
        if isinstance(layer, PruneLowMagnitude):
            raise ValueError(
                f"Layer '{path}' is wrapped for unstructured pruning (PruneLowMagnitude). Call "
                "tfsparse.strip_pruning(model) first, then prune its structure."
            )
        rule = rules_module.find_rule(layer, _REGISTERED)
        input_shapes = [_shape(t) for t in node.input_tensors]
        output_shapes = [_shape(t) for t in node.outputs]
        args = keras.tree.map_structure(lambda t: _atoms_or_value(t, atoms_of), node.arguments.args)
        kwargs = keras.tree.map_structure(lambda t: _atoms_or_value(t, atoms_of), node.arguments.kwargs)
        ctx = RuleContext(
            self._atoms, record, layer, path, inputs, args, kwargs, input_shapes, output_shapes, ignored
        )
        if rule is None:
            if not ignored:
                kind = "a Lambda layer" if isinstance(layer, keras.layers.Lambda) else "a custom layer"
                raise ValueError(
                    f"Layer '{path}' is {kind} of type {type(layer).__name__} that structured pruning has "
                    "no rule for, so it cannot tell which of its channels belong together. Pass "
                    f"ignored_layers=['{path}'] to keep its channels whole, or declare its coupling with "
                    f"tfsparse.structured.register_rule({type(layer).__name__}, rule)."
                )
            outputs = ctx.barrier()
        else:
            outputs = list(rule(ctx))
        record.calls += 1
        if len(outputs) != len(node.outputs):
            raise ValueError(
                f"The rule for layer '{path}' returned {len(outputs)} outputs; the layer has {len(node.outputs)}."
            )
        for space in record.spaces.values():
            if id(space) not in self._space_ids:
                self._space_ids.add(id(space))
                self._spaces.append(space)
        return outputs

    def _call_model(self, model: keras.Model, path: str, inputs: list) -> list:
        _check_model(model, where=f" (nested as '{path}')")
        if id(model) not in self._traced:
            if self._is_ignored(path, model.name):
                raise ValueError(
                    f"Nested model '{path}' is in `ignored_layers`; list the layers inside it "
                    f"('{path}/<layer>') instead."
                )
            record = self.layers.setdefault(path, LayerRecord(path, type(model).__name__))
            entry = []
            for i, tensor in enumerate(_model_inputs(model)):
                atoms = self._atoms.new(_last_width(tensor))
                record.spaces[f"input_{i}"] = Space(path, f"input_{i}", "in", atoms)
                self._spaces.append(record.spaces[f"input_{i}"])
                entry.append(atoms)
            self._traced[id(model)] = (entry, self._trace(model, f"{path}/", entry))
        entry, outputs = self._traced[id(model)]
        for atoms, own in zip(inputs, entry):
            self._atoms.union(atoms, own)
        return outputs

    # ---- groups -----------------------------------------------------------------------------

    def _build_groups(self) -> None:
        roots = self._atoms.roots()
        self._roots = roots
        fixed = np.array(self._atoms.fixed, dtype=bool)
        # Group classes (sets of joined atoms) through the spaces that produce them.
        parent: dict[int, int] = {}

        def find(c):
            while parent.setdefault(c, c) != c:
                parent[c] = parent[parent[c]]
                c = parent[c]
            return c

        order: dict[int, None] = {}
        for space in self._spaces:
            classes = roots[space.atoms] if len(space.atoms) else np.array([], dtype=np.int64)
            for c in classes.tolist():
                order.setdefault(c, None)
            if space.kind in SOURCE_KINDS and len(classes):
                first = find(int(classes[0]))
                for c in classes.tolist():
                    other = find(c)
                    if other != first:
                        parent[other] = first
        by_root: dict[int, list[int]] = {}
        for c in order:
            by_root.setdefault(find(c), []).append(c)
        self.groups: list[Group] = []
        self._class_group = np.full(len(roots), -1, dtype=np.int64)
        self._class_position = np.full(len(roots), -1, dtype=np.int64)
        self._class_ids: list[np.ndarray] = []
        for index, classes in enumerate(by_root.values()):
            self._class_group[classes] = index
            self._class_position[classes] = np.arange(len(classes))
            class_fixed = np.array([fixed[roots[c]] for c in classes], dtype=bool)
            self._class_ids.append(np.array(classes, dtype=np.int64))
            self.groups.append(Group(index, len(classes), [], bool((~class_fixed).any()), class_fixed))
        self._add_members()

    def _positions(self, atoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(group, channel) of each atom."""
        classes = self._roots[np.asarray(atoms, dtype=np.int64)]
        return self._class_group[classes], self._class_position[classes]

    def _add_members(self) -> None:
        seen = set()
        for record in self.layers.values():
            entries = [(space.kind, space.atoms) for space in record.spaces.values()] + list(record.marks)
            slices = [(s, *self._positions(s.atoms)) for s in record.slices]
            for kind, atoms in entries:
                groups, channels = self._positions(atoms)
                for g in dict.fromkeys(groups.tolist()):
                    if g < 0 or (record.path, kind, g) in seen:
                        continue
                    seen.add((record.path, kind, g))
                    weights = []
                    if kind not in ("merge", "concat", "flatten", "reshape"):
                        for s, s_groups, s_channels in slices:
                            if (s_groups == g).any() and set(s.atoms.tolist()) & set(atoms.tolist()):
                                weights.append((s.name, s.axis, np.where(s_groups == g, s_channels, -1)))
                    self.groups[g].members.append(
                        Member(record.path, kind, np.where(groups == g, channels, -1), weights)
                    )
        for space in self._spaces:
            if space.kind == "input":
                groups, channels = self._positions(space.atoms)
                for g in dict.fromkeys(groups.tolist()):
                    self.groups[g].members.insert(
                        0, Member("<input>", "input", np.where(groups == g, channels, -1))
                    )

    # ---- removal ----------------------------------------------------------------------------

    def keep_function(self, removed: dict):
        """`keep(atoms) -> bool mask` for a removal `{group index: [channel, ...]}` (validated)."""
        gone = np.zeros(len(self._roots), dtype=bool)
        for g, channels in removed.items():
            if not 0 <= g < len(self.groups):
                raise ValueError(
                    f"The plan removes channels of group {g}, but the model has {len(self.groups)} groups: "
                    "the plan was made for another model."
                )
            group = self.groups[g]
            channels = np.asarray(list(channels), dtype=np.int64)
            if channels.size == 0:
                continue
            if channels.min() < 0 or channels.max() >= group.channels:
                raise ValueError(
                    f"The plan removes channel {int(channels.max())} of group {g}, which has {group.channels} "
                    "channels: the plan was made for another model."
                )
            if group.fixed[channels].any():
                raise ValueError(
                    f"The plan removes channels of group {g} ({', '.join(group.layers()[:3])}) that are tied "
                    "to a model input or output or an ignored layer; they cannot be removed."
                )
            if len(set(channels.tolist())) >= group.channels:
                raise ValueError(
                    f"The plan removes every channel of group {g} ({', '.join(group.layers()[:3])}); keep at least one."
                )
            gone[self._class_ids[g][channels]] = True

        def keep(atoms: np.ndarray) -> np.ndarray:
            return ~gone[self._roots[np.asarray(atoms, dtype=np.int64)]]

        for space in self._spaces:
            if len(space.atoms) and not keep(space.atoms).any():
                raise ValueError(
                    f"The plan removes every channel of layer '{space.layer}' ({space.kind}, "
                    f"{len(space.atoms)} channels); keep at least one of them."
                )
        return keep

    # ---- views ------------------------------------------------------------------------------

    def weight_slices(self, group) -> list:
        """Every weight axis that carries the group's channels, for masks and scores.

        Args:
            group: a `Group` of this graph, or its index.

        Returns:
            `(layer path, weight index in layer.weights, axis, channels)` tuples, where `channels`
            gives each position along `axis` its channel in the group (-1: another group's).

        Example:

        ```python
        for path, index, axis, channels in graph.weight_slices(3):
            mask = np.isin(channels, removed)   # positions to zero along `axis`
        ```
        """
        index = group if isinstance(group, int) else group.index
        found = []
        for path, record in self.layers.items():
            for s in record.slices:
                owners, channels = self._positions(s.atoms)
                if (owners == index).any():
                    found.append((path, s.index, s.axis, np.where(owners == index, channels, -1)))
        return found

    def to_dict(self) -> dict:
        """JSON-able summary: `{"groups": [{"index", "channels", "prunable", "members": [{"layer", "kind"}]}]}`."""
        return {
            "groups": [
                {
                    "index": g.index,
                    "channels": g.channels,
                    "prunable": g.prunable,
                    "members": [{"layer": m.layer, "kind": m.kind} for m in g.members],
                }
                for g in self.groups
            ]
        }

    def __str__(self) -> str:
        prunable = sum(g.prunable for g in self.groups)
        lines = [f"DependencyGraph of '{self.model.name}': {len(self.groups)} groups, {prunable} prunable"]
        for g in self.groups:
            parts = [f"{m.layer}({m.kind})" for m in g.members]
            shown = ", ".join(parts[:8]) + (f", ... {len(parts) - 8} more" if len(parts) > 8 else "")
            state = "prunable" if g.prunable else "fixed"
            lines.append(f"  group {g.index:>3}: {g.channels:>5} channels, {state:<8} {shown}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<DependencyGraph '{self.model.name}': {len(self.groups)} groups>"


def _last_width(tensor) -> int:
    shape = tuple(tensor.shape)
    return int(shape[-1]) if len(shape) > 1 and shape[-1] is not None else 0


def _atoms_or_value(value, atoms_of: dict):
    if id(value) in atoms_of and isinstance(value, keras.KerasTensor):
        return atoms_of[id(value)]
    return value
