"""Breaking the concatenations of the `latex` format (commit 22d5477): the vectorizer's
`concatenate(a, b, ..., axis=k)` is typeset as the sum of pads it is; a value's line says how
far a pad with zeros after widens its free index; a pad with zeros before only, of a short
slice, bounds its index; a derivative's line drops a bound that is its variable's whole axis.

Faults found (each case below):

- a concatenation of a concatenation (`concatenate((concatenate((x, y)), z))`, and one of
  `2 * concatenate(...)`) was still `\\operatorname{concatenate}` of arrays of entries: the
  inner one was rewritten first, and the outer one looked its part's shape up by the rewritten
  node, which had none (fixed: `_mapped` says what each node it makes stands for);
- a pad of a pad said the inner pad's size (`pad(pad(x, (0, 2)), (0, 3))`: `(i < 6)` of 9
  entries; a concatenation of a concatenation `(i < 10)` of 13): the inner pad, typeset first,
  took the letter (fixed: the outer pad's size);
- a pad with zeros before only of a pad with zeros after said nothing (`pad(pad(x, (0, 2)),
  (3, 0))`, `[i \\geq 3] [i-3 < 4] x_{i-3}`: 7 entries to a reader, 9 in fact), as a short
  slice did before the commit (fixed: such a pad bounds its index too);
- an empty part (`ones(0)`, the adjoint of `sum(y[3:3])`) was a term `[i \\geq 3] [i < 3]`
  (0, but no term of the sum; fixed: left out as zeros are).

Left by the breaker as strict xfails, fixed after it: a pad's widening was said on a value
line's free index only; a running sum's output index, an array of entries' index and a
diagonal's second index ran over a pad's zeros unsaid.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import einderiv
from einderiv.generate.latex import mathtext_lines

SHAPES = {"x": (4,), "y": (6,), "z": (3,), "X": (2, 3), "Y": (2, 4)}


def rows(result) -> list[str]:
    return mathtext_lines(result.latex)


def value(text: str) -> list[str]:
    return rows(einderiv.compile(text, SHAPES))


def test_a_concatenation_of_a_concatenation_is_a_sum_of_pads():
    # 13 entries: x at 0..3, y at 4..9, z at 10..12
    assert value("concatenate((concatenate((x, y)), z))") == [
        r"f_{i} = \left[i < 10\right] \left(\left[i < 4\right] x_{i} + \left[i \geq 4\right] "
        r"y_{i-4}\right) + \left[i \geq 10\right] z_{i-10} \quad \left(i < 13\right)"]
    assert value("concatenate((2 * concatenate((x, y)), z))") == [
        r"f_{i} = \left[i < 10\right] 2 \left(\left[i < 4\right] x_{i} + \left[i \geq 4\right] "
        r"y_{i-4}\right) + \left[i \geq 10\right] z_{i-10} \quad \left(i < 13\right)"]
    # rows of (X | Y) over rows of (Y | X): 4 rows of 7
    assert value("concatenate((concatenate((X, Y), axis=1), concatenate((Y, X), axis=1)))") == [
        r"f_{ij} = \left[i < 2\right] \left(\left[j < 3\right] X_{ij} + \left[j \geq 3\right] "
        r"Y_{i,j-3}\right) + \left[i \geq 2\right] \left(\left[j < 4\right] Y_{i-2,j} + "
        r"\left[j \geq 4\right] X_{i-2,j-4}\right) \quad \left(i < 4, j < 7\right)"]
    text = "\n".join(value("concatenate((concatenate((x, y)), concatenate((z, x))))"))
    assert "concatenate" not in text and r"\left(i < 17\right)" in text, text
    assert value("sum(concatenate((concatenate((x[:1], y[:2])), z[:2])))") == [
        r"f = \sum_{i < 5} \left(\left[i < 3\right] \left(\left[i < 1\right] x_{i} + "
        r"\left[i \geq 1\right] y_{i-1}\right) + \left[i \geq 3\right] z_{i-3}\right)"]


def test_a_pad_of_a_pad_says_its_own_size():
    assert value("pad(pad(x, (0, 2)), (0, 3))") == [
        r"f_{i} = \left[i < 6\right] \left[i < 4\right] x_{i} \quad \left(i < 9\right)"]
    assert value("pad(pad(x, (0, 2)), (1, 3))") == [
        r"f_{i} = \left[i \geq 1\right] \left[i < 7\right] \left[i-1 < 4\right] x_{i-1} \quad "
        r"\left(i < 10\right)"]
    # zeros before only, of a pad with zeros after: x_{i-3} implies 7 entries, not 9
    assert value("pad(pad(x, (0, 2)), (3, 0))") == [
        r"f_{i} = \left[i \geq 3\right] \left[i-3 < 4\right] x_{i-3} \quad \left(i < 9\right)"]
    assert value("sum(pad(pad(x, (0, 2)), (3, 0)))") == [
        r"f = \sum_{i < 9} \left[i \geq 3\right] \left[i-3 < 4\right] x_{i-3}"]
    assert value("pad(pad(X, ((0, 0), (0, 2))), ((0, 0), (1, 0)))") == [
        r"f_{ij} = \left[j \geq 1\right] \left[j-1 < 3\right] X_{i,j-1} \quad "
        r"\left(j < 6\right)"]
    # ... and a pad with zeros before of one with zeros before says nothing: x_{i-1-2} does
    assert value("pad(pad(X, ((0, 0), (2, 0))), ((0, 0), (1, 0)))") == [
        r"f_{ij} = \left[j \geq 1\right] \left[j-1 \geq 2\right] X_{i,j-3}"]
    assert value("pad(x, (3, 0))") == [r"f_{i} = \left[i \geq 3\right] x_{i-3}"]


def test_an_empty_part_is_no_term():
    g = einderiv.grad("sum(y[:3] ** 2) + sum(y[3:3]) + sum(y[3:] ** 3)", "y", SHAPES)
    assert "ones(0)" in g.formula
    assert rows(g) == [r"\frac{\partial f}{\partial y_{i}} = \left[i < 3\right] 2 y_{i} + "
                       r"\left[i \geq 3\right] 3 y_{i}^{2}"]


@pytest.mark.parametrize("text,wrt,want", [
    ("sum(x[:2] ** 2) + sum(x[2:] ** 3)", "x",
     r"\frac{\partial f}{\partial x_{i}} = \left[i < 2\right] 2 x_{i} + \left[i \geq 2\right] "
     r"3 x_{i}^{2}"),
    # a gap: zeros(1) between, zeros(1) after; neither a term
    ("sum(y[:2] ** 2) + sum(y[3:5] ** 3)", "y",
     r"\frac{\partial f}{\partial y_{i}} = \left[i < 2\right] 2 y_{i} + \left[i \geq 3\right] "
     r"\left[i < 5\right] 3 y_{i}^{2}"),
    # along axis 1 and axis 2 of 2-D and 3-D variables
    ("sum(X[:, :1] ** 2) + sum(X[:, 1:] ** 3)", "X",
     r"\frac{\partial f}{\partial X_{ij}} = \left[j < 1\right] 2 X_{ij} + \left[j \geq 1\right] "
     r"3 X_{ij}^{2}"),
    ("sum(X[:1] ** 2) + sum(X[1:] ** 3)", "X",
     r"\frac{\partial f}{\partial X_{ij}} = \left[i < 1\right] 2 X_{ij} + \left[i \geq 1\right] "
     r"3 X_{ij}^{2}"),
])
def test_a_concatenated_adjoint_on_a_derivatives_line(text, wrt, want):
    g = einderiv.grad(text, wrt, SHAPES)
    assert "concatenate" in g.formula
    assert rows(g) == [want]


def test_a_concatenated_hessian():
    # (a concatenation of two padded diagonals once; two pads since the vectorizer merges a pad
    # of a pad (contraction._pad_widths): typeset alike, each block bounded by its pad)
    h = einderiv.hessian("sum(x[:2] ** 3) + sum(x[2:] ** 4)", "x", SHAPES)
    assert "pad(" in h.formula
    assert rows(h) == [
        r"\frac{\partial^2 f}{\partial x_{i}\,\partial x_{j}} = 6 \left[i < 2\right] \left[j < "
        r"2\right] \delta_{ij} x_{i} + 12 \left[i \geq 2\right] \left[j \geq 2\right] "
        r"\delta_{i-2,j-2} x_{i}^{2}"]


def test_the_latex_changes_no_value():
    """The rewrite is the printer's: the formula, the generated code and the values are the
    same after `.latex` (and the same as the IR's)."""
    rng = np.random.default_rng(0)
    arrays = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    for text, wrt in [("sum(concatenate((2 * concatenate((x, y)), z)) ** 3)", ["x", "y", "z"]),
                      ("sum(x[:2] ** 2) + sum(x[2:] ** 3)", ["x"]),
                      ("sum(pad(pad(x, (0, 2)), (3, 0)) ** 2)", ["x"])]:
        g = einderiv.grad(text, wrt, SHAPES)
        used = {k: v for k, v in arrays.items() if k in text}
        formula, source, before = g.formula, g.source, g(**used)
        assert "operatorname{concatenate}" not in g.latex
        assert (g.formula, g.source) == (formula, source)
        for a, b, c in zip(before, g(**used), g.evaluate_ir(**used)):
            np.testing.assert_allclose(a, b)
            np.testing.assert_allclose(a, c)


def test_the_unrolled_networks_are_mathematics():
    sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
    import problems
    for inst in (problems.lstm(5, 3, 3), problems.rnn(5, 3, 3)):
        text, shapes = inst.einderiv()
        latex = einderiv.grad(text, inst.wrt, shapes).latex
        assert "concatenate" not in latex and "{:}" not in latex, inst.problem


# -- left: a pad's zeros, where what binds its index is no pad ---------------------------------

def test_a_running_sum_of_a_pad_says_how_far():
    assert value("cumsum(pad(x, (0, 2)))") == [
        r"f_{i} = \sum_{j \leq i} \left[j < 4\right] x_{j} \quad \left(i < 6\right)"]


def test_an_array_of_a_pads_entries_says_how_far():
    assert value("stack((pad(x, (0, 2)), y))") == [
        r"f_{ij} = \operatorname{stack}\left(\left[\left[k < 4\right] x_{k}\right]_{k < 6}, "
        r"y\right)_{ij}"]


def test_a_diagonal_of_a_pad_says_how_far_both_run():
    assert value("diag(pad(x, (0, 2)))") == [
        r"f_{ij} = \delta_{ij} \left[i < 4\right] x_{i} \quad \left(i < 6, j < 6\right)"]


def test_the_concatenations_render(mathtext):
    texts = [einderiv.compile(t, SHAPES).latex for t in (
        "concatenate((concatenate((x, y)), z))",
        "concatenate((concatenate((X, Y), axis=1), concatenate((Y, X), axis=1)))",
        "pad(pad(x, (0, 2)), (3, 0))", "sum(concatenate((x[:2], y[:3]))[1:])",
        "concatenate((x[:2], y[:3]))[::-1]", "concatenate((X, Y), axis=-1).T")]
    texts.append(einderiv.hessian("sum(x[:2] ** 3) + sum(x[2:] ** 4)", "x", SHAPES).latex)
    assert not mathtext(texts)
