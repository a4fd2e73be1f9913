"""What a rule sees and declares: channel atoms, a layer's spaces, sliced weights and config edits.

A tensor's last axis (its channels) is described by an array of *atoms*, one integer per channel.
Atoms that must be removed together are joined (`RuleContext.couple`); a channel of the pruned
model is removed by removing its atom everywhere it appears.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

Rule = Callable[["RuleContext"], list]

# Kinds of the spaces a layer *produces*: their channels belong together in one group. Other kinds
# ("in", "norm", "depthwise", ...) follow whatever feeds them.
SOURCE_KINDS = ("out", "heads", "key_dim", "value_dim", "input", "fixed")


@dataclass
class Space:
    """One channel dimension declared by a layer: its atoms and what it is."""

    layer: str
    name: str
    kind: str
    atoms: np.ndarray


@dataclass
class WeightSlice:
    """An axis of one of a layer's weights whose positions follow `atoms`."""

    index: int  # position in `layer.weights`
    name: str  # the variable's name ("kernel", "gamma", ...)
    axis: int
    atoms: np.ndarray
    trainable: bool


@dataclass
class LayerRecord:
    """What the graph knows about one layer: its channel spaces, sliced weights and config edits."""

    path: str
    class_name: str
    spaces: dict = field(default_factory=dict)
    slices: list = field(default_factory=list)
    edits: list = field(default_factory=list)  # (key, atoms, transform)
    finishers: list = field(default_factory=list)  # fn(weights, keep) -> weights
    marks: list = field(default_factory=list)  # (kind, atoms): membership without weights
    calls: int = 0  # calls traced so far


class Atoms:
    """Union-find over channel atoms, with a `fixed` flag per atom (inputs, outputs, ignored layers)."""

    def __init__(self):
        self.parent: list[int] = []
        self.fixed: list[bool] = []

    def new(self, size: int, fixed: bool = False) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + size))
        self.fixed.extend([fixed] * size)
        return np.arange(start, start + size, dtype=np.int64)

    def find(self, atom: int) -> int:
        parent = self.parent
        root = atom
        while parent[root] != root:
            root = parent[root]
        while parent[atom] != root:
            parent[atom], atom = root, parent[atom]
        return root

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                if rx > ry:
                    rx, ry = ry, rx
                self.parent[ry] = rx
                self.fixed[rx] = self.fixed[rx] or self.fixed[ry]

    def fix(self, atoms: np.ndarray) -> None:
        for atom in atoms.tolist():
            self.fixed[self.find(atom)] = True

    def roots(self) -> np.ndarray:
        return np.array([self.find(a) for a in range(len(self.parent))], dtype=np.int64)


class RuleContext:
    """What a rule sees of one call of one layer, and the calls it makes to declare couplings.

    Attributes:
        layer: the Keras layer.
        path: its name, prefixed by the names of the models it is nested in (`"block/conv"`).
        inputs: atoms of each input tensor's last axis, in the order of the call's flattened inputs.
        args, kwargs: the call's arguments with each tensor replaced by its atoms.
        input_shapes, output_shapes: shapes of the call's tensors (batch axis included).
        ignored: whether the user listed this layer in `ignored_layers` (its spaces are then fixed,
            except the input channels it reads: those follow the layers that produce them).

    Example of a rule for a custom layer that scales each channel by a weight `scale`:

    ```python
    def channel_scale_rule(ctx):
        channels = ctx.space("channels", ctx.input_shapes[0][-1], kind="norm")
        ctx.couple(ctx.inputs[0], channels)
        ctx.slice(ctx.layer.scale, axis=0, atoms=channels)
        return [ctx.inputs[0]]
    ```
    """

    def __init__(
        self, atoms, record, layer, path, inputs, args, kwargs, input_shapes, output_shapes, ignored
    ):
        self._atoms = atoms
        self._record = record
        self.layer = layer
        self.path = path
        self.inputs = inputs
        self.args = args
        self.kwargs = kwargs
        self.input_shapes = input_shapes
        self.output_shapes = output_shapes
        self.ignored = ignored

    def config(self, key: str, default=None):
        """A value of the layer's config."""
        return self.layer.get_config().get(key, default)

    def space(self, name: str, size: int, kind: str) -> np.ndarray:
        """The layer's channel space `name` of `size` channels (the same atoms on every call).

        `kind` says what it is: "out" (channels the layer produces), "in" (channels it reads),
        "norm", "depthwise", "heads", ... Spaces of an ignored layer are fixed, but for "in".
        """
        spaces = self._record.spaces
        if name not in spaces:
            fixed = self.ignored and kind != "in"
            spaces[name] = Space(self.path, name, kind, self._atoms.new(int(size), fixed=fixed))
        elif len(spaces[name].atoms) != size:
            raise ValueError(
                f"Layer '{self.path}' is called with {size} channels where an earlier call had "
                f"{len(spaces[name].atoms)}; structured pruning needs every call of a shared layer to "
                "see the same channels. Pass it in `ignored_layers`."
            )
        return spaces[name].atoms

    def fresh(self, size: int) -> np.ndarray:
        """New fixed atoms, for outputs whose channels nothing may remove."""
        name = f"fixed_{len(self._record.spaces)}"
        while name in self._record.spaces:
            name += "_"
        atoms = self._atoms.new(int(size), fixed=True)
        self._record.spaces[name] = Space(self.path, name, "fixed", atoms)
        return atoms

    def couple(self, a: np.ndarray, b: np.ndarray) -> None:
        """Channels `a[i]` and `b[i]` are removed together (same length)."""
        if len(a) != len(b):
            raise ValueError(
                f"Layer '{self.path}': cannot couple {len(a)} channels with {len(b)}. A rule for "
                f"{type(self.layer).__name__} declares shapes that do not match its call."
            )
        self._atoms.union(a, b)

    def fix(self, atoms: np.ndarray) -> None:
        """These channels are never removed."""
        self._atoms.fix(atoms)

    def slice(self, variable, axis: int, atoms: np.ndarray) -> None:
        """Axis `axis` of weight `variable` (one of `layer.weights`) follows `atoms`."""
        if variable is None:
            return
        for index, weight in enumerate(self.layer.weights):
            if weight is variable:
                axis = axis % len(weight.shape)
                if any(s.index == index and s.axis == axis for s in self._record.slices):
                    return  # a shared layer's later call: its spaces are the same

                if weight.shape[axis] != len(atoms):
                    raise ValueError(
                        f"Layer '{self.path}': weight '{weight.name}' has {weight.shape[axis]} positions "
                        f"on axis {axis}, but the rule gives {len(atoms)} channels."
                    )
                self._record.slices.append(WeightSlice(index, weight.name, axis, atoms, weight.trainable))
                return
        raise ValueError(f"Layer '{self.path}': the rule slices a variable that is not among its weights.")

    def edit(self, key: str, atoms: np.ndarray, transform: Callable | None = None) -> None:
        """Config `key` becomes the number of kept `atoms`, or `transform(kept, old value)`."""
        if all(key != edit[0] for edit in self._record.edits):
            self._record.edits.append((key, atoms, transform))

    def finish(self, fn: Callable) -> None:
        """`fn(weights, keep)` adjusts the sliced weights (list, layer order); `keep(atoms)` is a mask.

        Only the first call of a shared layer registers it.
        """
        if not self._record.calls:
            self._record.finishers.append(fn)

    def mark(self, kind: str, atoms: np.ndarray) -> None:
        """Lists the layer as a member of the groups of `atoms` (for layers without weights)."""
        self._record.marks.append((kind, atoms))

    def barrier(self) -> list:
        """Nothing flows through: inputs fixed, outputs new fixed channels."""
        for atoms in self.inputs:
            self.fix(atoms)
            self.mark("fixed", atoms)
        return [self.fresh(channel_count(shape)) for shape in self.output_shapes]


def channel_count(shape) -> int:
    """The size of a shape's last axis (0 for a shape without one)."""
    return int(shape[-1]) if len(shape) > 1 and shape[-1] is not None else 0
