"""The reductions, selections and shape functions of issue 14 against JAX (x64).

Each case is an einderiv text, the shapes of its variables, and the same computation written
with `jax.numpy`. Its value is compared with JAX's, and the gradient and Hessian of a scalar
`sum(C * sin(EXPR))` (C a random weight of the output's shape; the sine makes the Hessians of
the linear shape functions their adjoints' composition, not 0) by every variable with
JAX's (a forward-over-reverse pass, as `jax.hessian`, jitted with x64), on random inputs drawn
afresh for each case but the same in every run. Variants take axes (negative, tuples), batch
axes and tensor bounds.

Kinks are compared where JAX's convention is the documented one (docs/language.md,
"Derivatives at kinks"): `max`/`min` split the gradient evenly among ties, `maximum` and
`minimum` give 1/2 to each side of a tie, and so does `clip`, `minimum(maximum(x, lo), hi)` in
both; so those cases draw whole numbers in {-1, 0, 1}, full of ties, besides entries that are
all distinct. A `where`'s condition has the derivative 0 in both; its operands are drawn apart
(no ties there).
"""
from __future__ import annotations

import functools
import zlib

import numpy as np
import pytest

import einderiv

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
jnp = pytest.importorskip("jax.numpy")

SIZES = {"b": 2, "n": 3, "m": 4, "p": 2, "q": 3}  # all different: a swapped axis shows
RTOL = 1e-10


def _draw(kind: str, shape, rng) -> np.ndarray:
    size = int(np.prod(shape))
    if kind == "normal":
        return rng.standard_normal(shape)
    if kind == "distinct":  # entries of either sign, at least 0.1 apart: no ties, no zeros
        return (rng.permutation(size) - size / 2 + 0.5).reshape(shape) * 0.1 + \
            0.01 * rng.random(shape)
    if kind == "ties":  # whole numbers: many ties at the maxima and at clip's bounds
        return rng.integers(-1, 2, shape).astype(float)
    if kind == "low":  # a lower bound, in (-1.5, -0.5)
        return -0.5 - rng.random(shape)
    if kind == "high":  # an upper bound, in (0.5, 1.5)
        return 0.5 + rng.random(shape)
    if kind == "zeros":  # normal, with a zero in every other row and two in the last row
        x = rng.standard_normal(shape)
        flat = x.reshape(-1, shape[-1])
        flat[::2, 0] = 0.0
        flat[-1, :2] = 0.0
        return x
    raise ValueError(kind)


def case(text, shapes, reference, draws=None, *, id):
    """`shapes`: {name: dimension names}, in the order `reference` takes the arrays; `draws`:
    {name: kind of `_draw`}, normal where not given."""
    return pytest.param(text, shapes, reference, draws or {}, id=id)


CASES = [
    # -- reductions -------------------------------------------------------------------------
    case("var(X)", {"X": ("n", "m")}, lambda X: jnp.var(X), id="var-all"),
    case("var(X, axis=0)", {"X": ("n", "m")}, lambda X: jnp.var(X, axis=0), id="var-axis0"),
    case("var(X, axis=-1)", {"X": ("b", "n", "m")}, lambda X: jnp.var(X, axis=-1),
         id="var-batched-neg"),
    case("var(X, axis=(0, 2))", {"X": ("b", "n", "m")}, lambda X: jnp.var(X, axis=(0, 2)),
         id="var-tuple"),
    case("std(x)", {"x": ("n",)}, lambda x: jnp.std(x), id="std-all"),
    case("std(X, axis=1)", {"X": ("n", "m")}, lambda X: jnp.std(X, axis=1), id="std-axis1"),
    case("std(X, axis=(-1, -3))", {"X": ("b", "n", "m")},
         lambda X: jnp.std(X, axis=(-1, -3)), id="std-tuple-neg"),
    case("mean(X, axis=(0, 2))", {"X": ("b", "n", "m")}, lambda X: jnp.mean(X, axis=(0, 2)),
         id="mean-tuple"),
    case("mean(X, axis=(-1, 0))", {"X": ("b", "n", "m")},
         lambda X: jnp.mean(X, axis=(-1, 0)), id="mean-tuple-neg"),
    case("mean(X, axis=(1, 2)) * mean(X)", {"X": ("b", "n", "m")},
         lambda X: jnp.mean(X, axis=(1, 2)) * jnp.mean(X), id="mean-tuple-times-all"),
    case("logsumexp(X)", {"X": ("n", "m")}, lambda X: jax.nn.logsumexp(X), id="lse-all"),
    case("logsumexp(X, axis=0)", {"X": ("n", "m")}, lambda X: jax.nn.logsumexp(X, axis=0),
         id="lse-axis0"),
    case("logsumexp(X, axis=-1)", {"X": ("b", "n", "m")},
         lambda X: jax.nn.logsumexp(X, axis=-1), id="lse-batched-neg"),
    case("logsumexp(X, axis=(0, 2))", {"X": ("b", "n", "m")},
         lambda X: jax.nn.logsumexp(X, axis=(0, 2)), id="lse-tuple"),
    case("prod(x)", {"x": ("n",)}, lambda x: jnp.prod(x), id="prod-all"),
    case("prod(X, axis=1)", {"X": ("n", "m")}, lambda X: jnp.prod(X, axis=1), id="prod-axis1"),
    case("prod(X, axis=-2)", {"X": ("b", "n", "m")}, lambda X: jnp.prod(X, axis=-2),
         id="prod-batched-neg"),
    case("prod(X, axis=-1)", {"X": ("b", "n", "m")}, lambda X: jnp.prod(X, axis=-1),
         {"X": "zeros"}, id="prod-zeros"),
    case("prod(x)", {"x": ("m",)}, lambda x: jnp.prod(x), {"x": "zeros"},
         id="prod-all-two-zeros"),
    case("prod(X, axis=(0, 2))", {"X": ("b", "n", "m")}, lambda X: jnp.prod(X, axis=(0, 2)),
         {"X": "zeros"}, id="prod-tuple-zeros"),
    case("max(X)", {"X": ("n", "m")}, lambda X: jnp.max(X), {"X": "distinct"}, id="max-all"),
    case("min(X, axis=0)", {"X": ("n", "m")}, lambda X: jnp.min(X, axis=0),
         {"X": "distinct"}, id="min-axis0"),
    case("max(X, axis=-1)", {"X": ("b", "n", "m")}, lambda X: jnp.max(X, axis=-1),
         {"X": "distinct"}, id="max-batched-neg"),
    case("max(X)", {"X": ("n", "m")}, lambda X: jnp.max(X), {"X": "ties"}, id="max-all-ties"),
    case("min(X)", {"X": ("b", "n", "m")}, lambda X: jnp.min(X), {"X": "ties"},
         id="min-all-ties"),
    case("max(X, axis=1)", {"X": ("n", "m")}, lambda X: jnp.max(X, axis=1), {"X": "ties"},
         id="max-axis1-ties"),
    case("min(X, axis=-2)", {"X": ("b", "n", "m")}, lambda X: jnp.min(X, axis=-2),
         {"X": "ties"}, id="min-batched-ties"),
    case("max(X, axis=(0, 2))", {"X": ("b", "n", "m")}, lambda X: jnp.max(X, axis=(0, 2)),
         {"X": "ties"}, id="max-tuple-ties"),
    case("min(X, axis=(-1, -2))", {"X": ("b", "n", "m")},
         lambda X: jnp.min(X, axis=(-1, -2)), {"X": "ties"}, id="min-tuple-neg-ties"),
    case("max(x) * min(x)", {"x": ("m",)}, lambda x: jnp.max(x) * jnp.min(x), {"x": "ties"},
         id="max-times-min-ties"),
    case("maximum(X, y) - minimum(y, X)", {"X": ("b", "n"), "y": ("n",)},
         lambda X, y: jnp.maximum(X, y) - jnp.minimum(y, X), {"X": "ties", "y": "ties"},
         id="maximum-minimum-ties"),
    case("clip(x, -0.5, 0.5)", {"x": ("n",)}, lambda x: jnp.clip(x, -0.5, 0.5),
         {"x": "distinct"}, id="clip-numbers"),
    case("clip(X, lo, hi)", {"X": ("b", "n"), "lo": ("n",), "hi": ("n",)},
         lambda X, lo, hi: jnp.clip(X, lo, hi), {"lo": "low", "hi": "high"},
         id="clip-tensor-bounds"),
    case("clip(X, lo, 0.5)", {"X": ("n", "m"), "lo": ("n", 1)},
         lambda X, lo: jnp.clip(X, lo, 0.5), {"X": "distinct", "lo": "low"},
         id="clip-column-bound"),
    case("clip(X, -1, 1)", {"X": ("n", "m")}, lambda X: jnp.clip(X, -1.0, 1.0),
         {"X": "ties"}, id="clip-ties"),
    case("clip(x, lo, hi)", {"x": ("b", "n"), "lo": ("n",), "hi": ("n",)},
         lambda x, lo, hi: jnp.clip(x, lo, hi), {"x": "ties", "lo": "ties", "hi": "ties"},
         id="clip-tensor-ties"),
    # -- selections --------------------------------------------------------------------------
    case("where(x > y, x ** 2, y)", {"x": ("n",), "y": ("n",)},
         lambda x, y: jnp.where(x > y, x ** 2, y), {"x": "distinct", "y": "distinct"},
         id="where"),
    case("where(X <= y, exp(X), y * X)", {"X": ("b", "n"), "y": ("n",)},
         lambda X, y: jnp.where(X <= y, jnp.exp(X), y * X),
         {"X": "distinct", "y": "distinct"}, id="where-broadcast"),
    case("where(c, X, 0.5)", {"c": ("n", 1), "X": ("n", "m")},
         lambda c, X: jnp.where(c, X, 0.5), {"c": "ties"}, id="where-tensor-condition"),
    # -- shape functions ----------------------------------------------------------------------
    case("concatenate((a, b))", {"a": ("n",), "b": (2,)},
         lambda a, b: jnp.concatenate((a, b)), id="concatenate"),
    case("concatenate((A, B, A), axis=1)", {"A": ("n", "m"), "B": ("n", 2)},
         lambda A, B: jnp.concatenate((A, B, A), axis=1), id="concatenate-three-axis1"),
    case("concatenate((A, B), axis=-2)", {"A": ("b", "n", "m"), "B": ("b", "n", "m")},
         lambda A, B: jnp.concatenate((A, B), axis=-2), id="concatenate-batched-neg"),
    case("concatenate((x, x * y))", {"x": ("n",), "y": ("n",)},
         lambda x, y: jnp.concatenate((x, x * y)), id="concatenate-like-sizes"),
    case("stack((a, b), axis=0)", {"a": ("n",), "b": ("n",)},
         lambda a, b: jnp.stack((a, b), axis=0), id="stack"),
    case("stack((s, t, s * t))", {"s": (), "t": ()}, lambda s, t: jnp.stack((s, t, s * t)),
         id="stack-scalars"),
    case("stack((A, B, A * B), axis=-1)", {"A": ("n", "m"), "B": ("n", "m")},
         lambda A, B: jnp.stack((A, B, A * B), axis=-1), id="stack-three-neg"),
    case("stack((A, B), axis=1)", {"A": ("b", "n", "m"), "B": ("b", "n", "m")},
         lambda A, B: jnp.stack((A, B), axis=1), id="stack-batched-axis1"),
    case("transpose(X)", {"X": ("b", "n", "m")}, lambda X: jnp.transpose(X),
         id="transpose"),
    case("transpose(X, (2, 0, 1))", {"X": ("b", "n", "m")},
         lambda X: jnp.transpose(X, (2, 0, 1)), id="transpose-axes"),
    case("transpose(X, (3, 1, 0, 2))", {"X": ("b", "n", "m", "p")},
         lambda X: jnp.transpose(X, (3, 1, 0, 2)), id="transpose-4d"),
    case("transpose(X, (-1, 0, -2)) * Y", {"X": ("b", "n", "m"), "Y": ("m", "b", "n")},
         lambda X, Y: jnp.transpose(X, (-1, 0, -2)) * Y, id="transpose-neg-axes"),
    case("swapaxes(X, 0, -1)", {"X": ("b", "n", "m")}, lambda X: jnp.swapaxes(X, 0, -1),
         id="swapaxes"),
    case("swapaxes(X, -1, -2) @ Y", {"X": ("b", "n", "m"), "Y": ("b", "n", "p")},
         lambda X, Y: jnp.swapaxes(X, -1, -2) @ Y, id="swapaxes-matmul"),
    case("X.mT", {"X": ("b", "n", "m")}, lambda X: X.mT, id="mT"),
    case("X.mT @ X", {"X": ("p", "b", "n", "m")}, lambda X: X.mT @ X, id="mT-4d-gram"),
    case("pad(x, (1, 2))", {"x": ("n",)}, lambda x: jnp.pad(x, (1, 2)), id="pad"),
    case("pad(X, ((1, 0), (0, 2)))", {"X": ("n", "m")},
         lambda X: jnp.pad(X, ((1, 0), (0, 2))), id="pad-per-axis"),
    case("pad(X, ((0, 0), (2, 1), (1, 1)))", {"X": ("b", "n", "m")},
         lambda X: jnp.pad(X, ((0, 0), (2, 1), (1, 1))), id="pad-batched"),
    case("kron(A, B)", {"A": ("n", "m"), "B": ("p", "q")}, lambda A, B: jnp.kron(A, B),
         id="kron"),
    case("kron(a, B)", {"a": ("n",), "B": ("p", "q")}, lambda a, B: jnp.kron(a, B),
         id="kron-ranks"),
    case("kron(A, B)", {"A": ("b", "n", "m"), "B": ("p", "q")},
         lambda A, B: jnp.kron(A, B), id="kron-batched"),
    case("kron(A, B)", {"A": ("b", "n", "m"), "B": ("p", "n", "q")},
         lambda A, B: jnp.kron(A, B), id="kron-3d"),
    case("kron(A, A)", {"A": ("n", "p")}, lambda A: jnp.kron(A, A), id="kron-square"),
]


def _close(actual, expected, what, tol=RTOL):
    actual, expected = np.asarray(actual, dtype=float), np.asarray(expected, dtype=float)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    err = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    assert err <= tol * scale, f"{what}: error {err:.3e}\neinderiv:\n{actual}\njax:\n{expected}"


def _inputs(text, shapes, reference, draws):
    """The arrays of a case, by name, and the weight C of its loss (the same in every run)."""
    rng = np.random.default_rng(zlib.crc32(repr((text, shapes)).encode()))
    arrays = {name: _draw(draws.get(name, "normal"), tuple(SIZES.get(d, d) for d in shape), rng)
              for name, shape in shapes.items()}
    out = jax.eval_shape(reference, *arrays.values()).shape
    return arrays, rng.standard_normal(out)


GROUP = 6  # cases compiled together by XLA


@functools.cache
def _jax_group(group: int) -> list:
    """(value, gradients, Hessian blocks) by JAX of the cases GROUP * group, ... (all three
    from one forward-over-reverse pass), compiled together and without XLA's optimizations
    (these have a few dozen entries): XLA's cost per program and its optimizations took
    most of this file's time."""
    cases = [param.values for param in CASES[GROUP * group:GROUP * (group + 1)]]
    inputs = [_inputs(*values) for values in cases]

    def one(reference, weight, args):
        def loss(*args):
            value = reference(*args)
            return jnp.sum(weight * jnp.sin(value)), value

        def gradient(*args):
            g, value = jax.grad(loss, argnums, has_aux=True)(*args)
            return g, (g, value)

        argnums = tuple(range(len(args)))
        hessian, (g, value) = jax.jacfwd(gradient, argnums, has_aux=True)(*args)
        return value, g, hessian

    def every(all_args):
        return [one(values[2], weight, args)
                for values, (_, weight), args in zip(cases, inputs, all_args)]

    all_args = [list(arrays.values()) for arrays, _ in inputs]
    compiled = jax.jit(every).lower(all_args).compile(
        compiler_options={"xla_backend_optimization_level": 0})
    return jax.tree_util.tree_map(np.asarray, compiled(all_args))


@pytest.mark.parametrize("index", [pytest.param(i, id=param.id, marks=param.marks)
                                   for i, param in enumerate(CASES)])
def test_value_gradient_and_hessian_match_jax(index):
    text, shapes, reference, draws = CASES[index].values
    arrays, weight = _inputs(text, shapes, reference, draws)
    names = list(shapes)
    forward = einderiv.compile(text, shapes)
    value = forward(**arrays)
    loss_text = f"sum(C * sin({text}))"
    loss_shapes = {**shapes, "C": forward.shape}
    grads = einderiv.grad(loss_text, names, loss_shapes)(**arrays, C=weight)
    hessian = einderiv.hessian(loss_text, names, loss_shapes)(**arrays, C=weight)

    want_value, want_grads, want_hessian = _jax_group(index // GROUP)[index % GROUP]
    _close(value, want_value, f"value of {text}")
    for i, a in enumerate(names):
        _close(grads[i], want_grads[i], f"gradient of {loss_text} by {a}")
        for j, b in enumerate(names):
            _close(hessian[i][j], want_hessian[i][j], f"Hessian of {loss_text} by {a}, {b}",
                   1e-9)
