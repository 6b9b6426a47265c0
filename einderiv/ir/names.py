"""The names a printed program may use: the user's keep their meaning, ours give way.

Every printer (formula, Python, LaTeX, einsum, Einstein) writes the user's names (input
variables, dimension names, bound names) with the user's meaning, and picks its own names (the
outputs `dx`, `out`, the temporaries `t0`, ...) around them: a printed line never rebinds a name
the user gave to something else.
"""
from __future__ import annotations

from .nodes import Contract, Delta, Node, Size, Unit, Var, topological


def input_names(roots, declared: dict | None = None, order: list | None = None) -> set[str]:
    """The variables (used by `roots` or declared) and every dimension name: of their shapes,
    and of any node (a summed index, `size(m)`, a slice bound). `order`: every node reachable
    from `roots` (`topological(*roots)`), when the caller has it already."""
    nodes = topological(*roots) if order is None else order
    names = set(declared or {})
    # Shapes and label sizes are tuples shared by many nodes: each distinct one is read once.
    groups: set[tuple] = set()
    dims = {d for shape in (declared or {}).values() for d in shape}
    for n in nodes:
        groups.add(n.shape)
        t = type(n)
        if t is Contract:
            groups.add(n.dims)
        elif t is Var:
            names.add(n.name)
        elif t is Size:
            dims.add(n.dim)
        elif t is Delta:
            dims.add(n.offset)
        elif t is Unit:
            dims.add(n.position)
    for group in groups:
        dims.update(group)
    return names | {d.name for d in dims if d.name}


def output_labels(roots: dict[str, Node], names: dict | None, inputs: set[str]
                  ) -> dict[str, Node]:
    """`roots` (label -> node) with every label that means something else to the user or to an
    earlier output renamed `label_1`, `label_2`, ...: a label is kept when it is neither an
    input name (`inputs`) nor a bound name (`names`: node -> name) of another node."""
    meaning: dict[str, set[int]] = {}
    for node, name in (names or {}).items():
        meaning.setdefault(name, set()).add(id(node))
    taken = set(inputs) | set(meaning) | set(roots)
    out: dict[str, Node] = {}
    for label, node in roots.items():
        mine = label not in inputs and meaning.get(label, {id(node)}) == {id(node)}
        if label in out or not mine:
            k = 1
            while f"{label}_{k}" in taken or f"{label}_{k}" in out:
                k += 1
            label = f"{label}_{k}"
        out[label] = node
    return out
