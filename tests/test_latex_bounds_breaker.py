"""Breaking the slice bounds of the `latex` format (commit 8341903): index notation implies an
index's range from what it indexes, so an index taken by a slice that stops short carries its
bound where it is bound (`\\sum_{j < 3}`, `\\max_{j < 3}`, `\\left[x_{j}\\right]_{j < 3}`) or,
free, after its line (`\\quad \\left(i < 3\\right)`); and no other index carries one.

Faults found (each case below): a bound lost where something other than a \\sum binds the index
(a function along an axis, the array notation of an argument, a running sum's output, a slice
of a slice, a diagonal's second index), left behind there and then printed on a later sum that
reuses the letter (a wrong bound); a bound set on a free index that a pad widens again (every
gradient of a slice: `\\frac{\\partial f}{\\partial x_{i}} = 2 \\left[i < 3\\right] x_{i}
\\quad \\left(i < 3\\right)` said the derivative has 3 entries); a function along an axis
whose result is sliced printed as the function of the slice (`softmax(x[:5])[:3]` as
`softmax(x[:3])`); and `\\sum_{i,j < 3}`, which reads as both indices below 3."""
from __future__ import annotations

import re

import pytest

import einderiv
from einderiv.generate.latex import mathtext_lines

SHAPES = {"x": ("n",), "y": ("n",), "X": ("n", "d"), "W": ("d", "k"), "A": ("n", "n")}


def rows(result) -> list[str]:
    return mathtext_lines(result.latex)


def made(kind: str, text: str, wrt: str | None = None):
    if kind == "value":
        return einderiv.compile(text, SHAPES)
    return getattr(einderiv, kind)(text, wrt, SHAPES)


CASES = [
    # a running sum: its output index runs over the slice (it was unbounded), and the summed
    # index's bound was left behind for the next \sum over j, of all of y (`\sum_{j < 3} y_{j}`)
    ("value", "cumsum(x[:3]) + sum(y)", None,
     [r"f_{i} = \left(\sum_{j \leq i} x_{j}\right) + \left(\sum_{j} y_{j}\right) "
      r"\quad \left(i < 3\right)"]),
    ("value", "sum(cumsum(x[:3]))", None, [r"f = \sum_{i < 3} \sum_{j \leq i} x_{j}"]),
    # a function along an axis binds its index below it (it was `\operatorname{logsumexp}_{i}`,
    # of all of x to a reader), and its bound was left for the next sum (`\sum_{i < 3}`)
    ("value", "logsumexp(x[:3])", None,
     [r"f = \operatorname{logsumexp}_{i < 3}\left(x_{i}\right)"]),
    ("value", "norm(x[:3]) + sum(x[:2])", None,
     [r"f = \operatorname{norm}_{i < 3}\left(x_{i}\right) + \left(\sum_{i < 2} x_{i}\right)"]),
    ("value", "max(X[:3], axis=0)", None, [r"f_{i} = \max_{j < 3}\left(X_{ji}\right)"]),
    ("value", "logsumexp(X[:, :3], axis=1)", None,
     [r"f_{i} = \operatorname{logsumexp}_{j < 3}\left(X_{ij}\right)"]),
    # an argument with no matrix form is the array of its entries, which binds the indices
    ("value", "det(A[:3, :3]) + sum(x[:2])", None,
     [r"f = \det\left(\left[A_{ij}\right]_{i < 3,j < 3}\right) + \left(\sum_{i < 2} "
      r"x_{i}\right)"]),
    ("value", "stack((x[:3], y[:3]))", None,
     [r"f_{ij} = \operatorname{stack}\left(\left[x_{l}\right]_{l < 3}, \left[y_{l}\right]_{l "
      r"< 3}\right)_{ij}"]),
    ("value", "softmax(x[:3])[::-1]", None,
     [r"f_{i} = \operatorname{softmax}\left(\left[x_{j}\right]_{j < 3}\right)_{2-i} \quad "
      r"\left(i < 3\right)"]),
    ("grad", "det(A[:3, :3])", "A",
     [r"\frac{\partial f}{\partial A_{ij}} = \left[j < 3\right] \left[i < 3\right] "
      r"\operatorname{adj}\left(\left[A_{lp}\right]_{l < 3,p < 3}\right)_{ji}"]),
    # a pad widens the index again: its bracket says where the slice is, and the index runs
    # over the pad (the derivative of a slice is one: it has n entries, not 3)
    ("value", "sum(pad(x[:3], (0, 2)) * y[:5])", None,
     [r"f = \sum_{i < 5} \left[i < 3\right] x_{i} y_{i}"]),
    ("grad", "sum(x[:3] ** 2)", "x",
     [r"\frac{\partial f}{\partial x_{i}} = 2 \left[i < 3\right] x_{i}"]),
    ("grad", "sum(concatenate((x[:2], y)) ** 2)", "x",
     [r"\frac{\partial f}{\partial x_{i}} = \left[i < 2\right] 2 \left(\left[i < 2\right] x_{i} "
      r"+ \left[i \geq 2\right] y_{i-2}\right)"]),
    ("grad", "sum(logsumexp(X[:, :3], axis=1))", "X",
     [r"\frac{\partial f}{\partial X_{ij}} = \left[j < 3\right] \operatorname{softmax}_{j "
      r"< 3}\left(X_{ij}\right)"]),
    # ... and the softmax is of the 3 entries, not of the n the index runs over
    ("grad", "logsumexp(x[:3])", "x",
     [r"\frac{\partial f}{\partial x_{i}} = \left[i < 3\right] \operatorname{softmax}_{i < "
      r"3}\left(x_{i}\right)"]),
    ("hessian", "sum(x[:3] ** 3)", "x",
     [r"\frac{\partial^2 f}{\partial x_{i}\,\partial x_{j}} = 6 \left[i < 3\right] \left[j < "
      r"3\right] \delta_{ij} x_{i}"]),
    # a binder of several indices, some bounded: `\sum_{i,j < 3}` reads as i and j below 3
    # (as `\sum_{i,j=1}^{n}` runs both from 1 to n)
    ("value", "sum(X[:, :3])", None, [r"f = \sum_{i} \sum_{j < 3} X_{ij}"]),
    ("value", "sum(softmax(X[:, :3]))", None,
     [r"f = \sum_{i} \sum_{j < 3} \operatorname{softmax}_{j < 3}\left(X_{ij}\right)"]),
    ("value", "logsumexp(X[:, :3])", None,
     [r"f = \operatorname{logsumexp}_{i < n,j < 3}\left(X_{ij}\right)"]),
    ("value", "kron(x[:2], y)", None,
     [r"f_{i} = \operatorname{reshape}\left(\left[x_{j} y_{l}\right]_{j < 2,l < n}, \left(2 "
      r"\cdot n\right)\right)_{i}"]),
    # a slice of a function along an axis: the function runs over more than the index
    # (`\operatorname{softmax}_{i}\left(x_{i}\right) \quad \left(i < 3\right)` was
    # softmax(x[:3]) as well)
    ("value", "softmax(x[:5])[:3]", None,
     [r"f_{i} = \operatorname{softmax}\left(\left[x_{j}\right]_{j < 5}\right)_{i} \quad "
      r"\left(i < 3\right)"]),
    ("value", "softmax(X, axis=1)[:, :3]", None,
     [r"f_{ij} = \operatorname{softmax}\left(\left[X_{il}\right]_{l}\right)_{j} \quad "
      r"\left(j < 3\right)"]),
    ("value", "softmax(X[:, :3])", None,
     [r"f_{ij} = \operatorname{softmax}_{j < 3}\left(X_{ij}\right) \quad \left(j < 3\right)"]),
    # a slice of a slice: the outer one starts late, the inner one stops short (`x_{i+1}`
    # of all i implied x_1 .. x_{n-1}; it is x_1 .. x_{n-2})
    ("value", "sum(x[:-1][1:])", None, [r"f = \sum_{i < n-2} x_{i+1}"]),
    ("value", "x[:-1][1:]", None, [r"f_{i} = x_{i+1} \quad \left(i < n - 2\right)"]),
    # a diagonal matrix of a slice: its second index runs as far as its first
    ("value", "diag(x[:3])", None,
     [r"f_{ij} = \delta_{ij} x_{i} \quad \left(i < 3, j < 3\right)"]),
    ("jacobian", "x[:3] ** 2", "x",
     [r"\frac{\partial f_{i}}{\partial x_{j}} = \left[j < 3\right] \delta_{ij} 2 x_{i} "
      r"\quad \left(i < 3\right)"]),
]


@pytest.mark.parametrize("kind,text,wrt,want", CASES,
                         ids=[f"{c[0]}:{c[1]}" for c in CASES])
def test_an_index_is_bounded_where_it_is_bound(kind, text, wrt, want):
    assert rows(made(kind, text, wrt)) == want


# the gradient of a slice is a pad (`pad(..., ((0, n - 3),))`): its free index runs over all of
# x, so no line whose value is a pad of a slice bounds its free index
@pytest.mark.parametrize("text,wrt", [
    ("sum(x[:3] ** 2)", "x"), ("logsumexp(x[:3])", "x"), ("max(x[:3])", "x"),
    ("sum(exp(x[:4]) * y[:4])", "x"), ("sum((X[:3] @ W)[:2] ** 2)", "X"),
    ("sum(x[:-1][1:] * y[2:])", "y"), ("sum(cumsum(x[:3]) ** 2)", "x"),
    ("sum(diag(x[:3]) @ X[:3])", "x")])
def test_a_gradient_of_a_slice_has_all_its_entries(text, wrt):
    *_, last = rows(made("grad", text, wrt))
    assert last.startswith(r"\frac{\partial f}{\partial " + wrt + "_"), last
    assert r"\quad" not in last, last


# after any construct that binds an index, the next \sum that takes the letter over a whole
# operand carries no bound
@pytest.mark.parametrize("first", ["cumsum(x[:3])", "logsumexp(x[:3])", "max(x[:3])",
                                   "norm(x[:3])", "det(A[:3, :3])", "sum(inv(A[:3, :3]))",
                                   "sum(triu(A[:3, :3]))", "sum(x[:3])", "tr(A[:3, :3])",
                                   "sum(stack((x[:3], y[:3])))", "sum(softmax(x[:3])[::-1])"])
def test_no_bound_is_left_for_a_later_sum(first):
    text = rows(made("value", f"{first} + sum(y)"))[-1]
    # the sum of y is the last term: its \sum binds its index over all of y
    assert re.search(r"\\sum_\{[a-z]\} y_\{[a-z]\}\\right\)( \\quad .*)?$", text), text


def test_a_pad_of_a_slice_bounds_no_index_by_the_slice():
    assert rows(made("value", "pad(x[:3], (0, 2))"))[0].startswith(r"f_{i} = \left[i < 3\right] "
                                                                   r"x_{i}")
    assert r"\left(i < 3\right)" not in made("value", "pad(x[:3], (0, 2))").latex


def test_a_pad_of_a_value_says_how_far_its_index_runs():
    """A pad's free index runs past what it indexes (f_{i} = [i < 3] x_{i} has 5 entries):
    a value's line says how far; a derivative's runs over its variable's axes."""
    assert rows(made("value", "pad(x[:3], (0, 2))")) == [
        r"f_{i} = \left[i < 3\right] x_{i} \quad \left(i < 5\right)"]
    assert rows(made("value", "pad(x, (1, 2))")) == [
        r"f_{i} = \left[i \geq 1\right] \left[i < n + 1\right] x_{i-1} \quad "
        r"\left(i < n + 3\right)"]
    assert rows(made("value", "pad(x, (2, 0))")) == [r"f_{i} = \left[i \geq 2\right] x_{i-2}"]
    j = einderiv.jacobian("3 * pad(x, (0, 2))", "x", {"x": ("n",)})
    assert rows(j) == [r"\frac{\partial f_{i}}{\partial x_{j}} = 3 \delta_{ji}"]


def test_a_concatenation_of_slices_is_mathematics():
    """The vectorizer's concatenate (the parts as arguments) did not lower for the printer:
    that line and every later one were typeset as they read, numpy's `y_{{:}3}`. It is the
    sum of pads it is; the pad of a short slice bounds its index (y_{i-2} implies y's range)."""
    text = "\n".join(rows(made("value", "sum(concatenate((x[:2], y[:3])))")))
    assert "{:}" not in text and r"\operatorname{sum}" not in text, text
    assert rows(made("value", "sum(concatenate((x[:2], y[:3])))")) == [
        r"f = \sum_{i < 5} \left(\left[i < 2\right] x_{i} + \left[i \geq 2\right] y_{i-2}\right)"]
    assert rows(made("value", "2 * concatenate((x[:2], y[:3]))")) == [
        r"f_{i} = 2 \left(\left[i < 2\right] x_{i} + \left[i \geq 2\right] y_{i-2}\right) "
        r"\quad \left(i < 5\right)"]
    assert rows(made("value", "sum(pad(y[:3], (2, 0)))")) == [
        r"f = \sum_{i < 5} \left[i \geq 2\right] y_{i-2}"]


def test_the_stacked_lstms_concatenated_adjoints_are_mathematics():
    """An unrolled LSTM with gates as slices of one pre-activation: its adjoints are joined
    by concatenate, which was `\\operatorname{concatenate}` of numpy-like parts."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
    import problems
    inst = problems.lstm_stacked(5, 3, 3)
    text, shapes = inst.einderiv()
    g = einderiv.grad(text, inst.wrt, shapes)
    assert "concatenate" in g.formula
    assert "concatenate" not in g.latex and "{:}" not in g.latex
    joined = [r for r in rows(g) if r"\left[i \geq 9\right]" in r]
    assert joined and all(r.endswith(r"\quad \left(i < 12\right)") for r in joined), joined


def test_the_bounds_render(mathtext):
    texts = [made(kind, text, wrt).latex for kind, text, wrt, _ in CASES]
    # bounds of a step's slice: a quotient rounded down, in a subscript and after a line
    texts += [made("value", "sum(x[1:n-1:2])").latex, made("value", "x[1:-1:3]").latex,
              made("value", "max(X[:, 1:n-1:2])").latex]
    assert r"\sum_{i < \left\lfloor \frac{n-1}{2} \right\rfloor}" in texts[-3]
    assert not mathtext(texts)
