"""The rewrite pass: every node of a program in normal form under the rule book's rewrites.

Children are rewritten before their parents, and a node whose children changed is rebuilt
through the IR builders (so every fold of lowering applies again); then the rewrites are tried
at the node in file order, and what one gives is rewritten in turn, until none applies. Each
node is visited once (memoized on the hash-consed node, without recursion), so the pass is
linear in the program's size, and a shared subexpression is rewritten once.

It ends because each rewrite calls fewer functions on its right than on its left, or as many
with fewer uses of its variables and no more numbers, and uses no variable more often (all
checked when its line is read): every application takes at least one function application
(`Map` or `Prim`) out of the program's expression tree, or keeps their number and takes out a
leaf (each variable stands for a subtree with a leaf at least), and the builders never add one.

>>> import einderiv
>>> print(einderiv.compile("log(1 + exp(x))", {"x": ("n",)}).formula)
softplus(x)
"""
from __future__ import annotations

from ..ir import build
from ..ir.nodes import Add, Contract, Map, Node, Prim
from ..rulebook import RuleBook
from .pattern import compiled, flat_terms


class Rewriter:
    """Rewrites IR with a rule book's rewrites. Calls share one memo: a derivative, which
    holds the (already rewritten) forward program, is rewritten only where it is new."""

    def __init__(self, rules: RuleBook):
        self.index = compiled(rules)
        self.normal: dict[Node, Node] = {}  # node -> its normal form

    def __call__(self, roots: list[Node]) -> list[Node]:
        if not self.index:
            return list(roots)
        for root in roots:
            self._normalize(root)
        return [self.normal[r] for r in roots]

    def _normalize(self, root: Node) -> None:
        normal = self.normal
        becomes: dict[Node, Node] = {}  # a node -> the node its normal form is that of
        stack = [root]
        while stack:
            node = stack[-1]
            if node in normal:
                stack.pop()
                continue
            target = becomes.get(node)
            if target is not None:
                if target in normal:
                    normal[node] = normal[target]
                    stack.pop()
                else:
                    stack.append(target)
                continue
            children = node.children()
            missing = [c for c in children if c not in normal]
            if missing:
                stack.extend(missing)
                continue
            if any(normal[c] is not c for c in children):
                becomes[node] = _rebuilt(node, normal)
                continue
            replaced = self._apply(node)
            if replaced is None:
                normal[node] = node
                stack.pop()
            else:
                becomes[node] = replaced

    def _apply(self, node: Node) -> Node | None:
        if isinstance(node, Map):
            rules = self.index.get(("map", node.fn))
        elif isinstance(node, Prim):
            rules = self.index.get(("prim", node.fn))
        elif isinstance(node, Add):
            rules = self.index.get(("add",))
        elif isinstance(node, Contract):
            rules = self.index.get(("contract",))
        else:
            return None
        if not rules:
            return None
        present = None
        for rule in rules:
            if rule.needs and not isinstance(node, (Map, Prim)):
                if present is None:
                    present = _functions_within(node)
                if not rule.needs <= present:
                    continue
            replaced = rule.apply(node)
            if replaced is not None and replaced is not node:
                return replaced
        return None


def _functions_within(node: Node) -> set[str]:
    """The elementwise functions applied at `node`'s operands and their operands (a product's
    factors, a sum's terms, those of the sums nested in it, and their factors): enough to skip
    a rewrite that cannot match."""
    found = set()
    children = [t for _, t in flat_terms(node)] if isinstance(node, Add) else node.children()
    for child in children:
        if isinstance(child, Map):
            found.add(child.fn)
        for grandchild in child.children():
            if isinstance(grandchild, Map):
                found.add(grandchild.fn)
    return found


def _rebuilt(node: Node, normal: dict[Node, Node]) -> Node:
    """`node` with its children replaced by their normal forms, through the builders."""
    if isinstance(node, Map):
        return build.elementwise(node.fn, [normal[a] for a in node.args])
    if isinstance(node, Contract):
        return build.contract(node.out, [(normal[c], ls) for c, ls in node.operands],
                              {l: node.dims[l] for l in node.out})
    if isinstance(node, Add):
        return build.add([(c, normal[t]) for c, t in node.terms])
    return Prim(node.fn, tuple(normal[a] for a in node.args), node.params, node.shape)
