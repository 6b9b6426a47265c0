"""einsum with `...` (issue 14, item 6), as numpy accepts it: the axes no letter names,
broadcast across the operands as numpy broadcasts (right-aligned, equal sizes or 1), in the
output where `->` puts `...`, and first in implicit mode (no `->`).

Values against numpy.einsum for each form; gradients and Hessians against JAX and central
differences for the batched products; the printed formula compiles back (tests/conftest.py
checks every result); bad subscripts are errors with a caret.
"""
from __future__ import annotations

import numpy as np
import pytest

import einderiv
from einderiv.check import finite_difference, relative_error

RNG = np.random.default_rng(6)

FORMS = [  # (subscripts, {operand: (shape, sizes)})
    ("...ij,...jk->...ik", {"A": (("b", "n", "m"), (2, 3, 4)), "B": (("b", "m", "k"), (2, 4, 5))}),
    ("...ij,...jk", {"A": (("b", "n", "m"), (2, 3, 4)), "B": (("m", "k"), (4, 5))}),
    ("...ij,...jk", {"A": ((5, 1, 2, 3), (5, 1, 2, 3)), "B": ((4, 3, 2), (4, 3, 2))}),
    ("ij...,jk...->ik...", {"A": (("n", "m", "b"), (3, 4, 2)), "B": (("m", "k", "b"), (4, 5, 2))}),
    ("i...", {"A": (("n", "m"), (2, 3))}),
    ("...i->...", {"A": (("n", "m"), (2, 3))}),
    ("...ii->...i", {"A": (("b", "n", "n"), (2, 3, 3))}),
    ("...ii", {"A": (("b", "n", "n"), (2, 3, 3))}),
    ("i,...->...i", {"x": (("n",), (3,)), "A": (("b", "m"), (2, 4))}),
    ("...,...", {"x": (("n",), (3,)), "A": (("b", "n"), (2, 3))}),
    ("ij->...ij", {"A": (("n", "m"), (2, 3))}),
    ("...j,...j->...", {"A": (("b", "n"), (2, 3)), "B": (("b", "n"), (2, 3))}),
    ("b...i,bi->b...", {"A": (("b", "c", "d", "n"), (2, 3, 4, 5)), "x": (("b", "n"), (2, 5))}),
]


def _call(spec, operands):
    return f'einsum("{spec}", {", ".join(operands)})'


@pytest.mark.parametrize("spec,operands", FORMS, ids=[f[0] for f in FORMS])
def test_values_as_numpy(spec, operands):
    shapes = {k: shape for k, (shape, _) in operands.items()}
    arrays = {k: RNG.normal(size=sizes) for k, (_, sizes) in operands.items()}
    f = einderiv.compile(_call(spec, operands), shapes)
    expected = np.einsum(spec, *arrays.values())
    out = f(**arrays)
    assert np.shape(out) == expected.shape
    assert relative_error(out, expected) < 1e-14


def _jnp():
    import jax.numpy
    return jax.numpy


DERIVED = [  # (expression, shapes, sizes, the same in JAX)
    ('sum(sin(einsum("...ij,...jk->...ik", A, B)))',
     {"A": ("b", "n", "m"), "B": ("b", "m", "k")}, {"A": (2, 3, 4), "B": (2, 4, 2)},
     lambda A, B: _jnp().sum(_jnp().sin(_jnp().einsum("...ij,...jk->...ik", A, B)))),
    ('sum(einsum("...ii", A) ** 3)', {"A": ("b", "n", "n")}, {"A": (2, 3, 3)},
     lambda A: _jnp().sum(_jnp().einsum("...ii", A) ** 3)),
    ('sum(exp(einsum("...ij,...j", A, x)))', {"A": ("b", "n", "m"), "x": ("m",)},
     {"A": (2, 3, 4), "x": (4,)},
     lambda A, x: _jnp().sum(_jnp().exp(_jnp().einsum("...ij,...j", A, x)))),
]


@pytest.mark.parametrize("expr,shapes,sizes,reference", DERIVED, ids=[d[0] for d in DERIVED])
def test_gradient_and_hessian_against_jax_and_differences(expr, shapes, sizes, reference):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    arrays = {k: RNG.normal(size=s) * 0.5 for k, s in sizes.items()}
    values = list(arrays.values())
    f = einderiv.compile(expr, shapes)

    def derivatives(*v):  # one jitted function: JAX compiles each eager operation on its own
        return (reference(*v), [jax.grad(reference, argnums=k)(*v) for k in range(len(v))],
                [jax.hessian(reference, argnums=k)(*v) for k in range(len(v))])
    value, grads, hessians = jax.jit(derivatives)(*values)
    assert relative_error(f(**arrays), value) < 1e-12
    for k, wrt in enumerate(arrays):
        g = einderiv.grad(expr, wrt, shapes)
        h = einderiv.hessian(expr, wrt, shapes)
        assert relative_error(g(**arrays), grads[k]) < 1e-12
        assert relative_error(g(**arrays), finite_difference(f, arrays, wrt)) < 1e-7
        assert relative_error(h(**arrays), hessians[k]) < 1e-11
        assert relative_error(h(**arrays), finite_difference(g, arrays, wrt)) < 1e-6


def test_the_formula_is_matrix_code():
    shapes = {"A": ("b", "n", "m"), "B": ("b", "m", "k")}
    assert einderiv.compile('einsum("...ij,...jk->...ik", A, B)', shapes).formula == "A @ B"
    g = einderiv.grad('sum(einsum("...ij,...jk->...ik", A, B))', "A", shapes)
    assert "einsum" not in g.formula and "..." not in g.formula, g.formula


@pytest.mark.parametrize("text,shapes,error,words", [
    ('einsum("...ij,...jk->ik", A, B)', {"A": ("b", "n", "m"), "B": ("b", "m", "k")},
     einderiv.ShapeError, "has no '...'"),
    ('einsum("...i...", A)', {"A": ("n", "m")}, einderiv.ParseError, "one '...'"),
    ('einsum("...i.j", A)', {"A": ("n", "m")}, einderiv.ParseError, "one '...'"),
    ('einsum("...ij,...jk", A, B)', {"A": ("b", "n", "m"), "B": ("c", "m", "k")},
     einderiv.ShapeError, "do not broadcast"),
    ('einsum("...ijk", A)', {"A": ("n", "m")}, einderiv.ShapeError, "rank 2"),
    ('einsum("ij", A)', {"A": ("b", "n", "m")}, einderiv.ShapeError, "rank 3"),
    ('einsum("...ij->...ik", A)', {"A": ("n", "m")}, einderiv.ParseError, "appears in no"),
])
def test_bad_subscripts_are_errors_with_a_caret(text, shapes, error, words):
    with pytest.raises(error) as caught:
        einderiv.compile(text, shapes)
    assert words in caught.value.message
    assert "^" in str(caught.value)
