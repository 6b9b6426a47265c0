"""Linear algebra of issue 14, item 5: solve(A, b), inv(A) met on one axis as a solve, cholesky,
logdet through Cholesky, matrix_power, pinv.

Each construct, on random well-conditioned inputs (unbatched and stacked): its value, gradient
and Hessian against JAX (float64) and the gradient against central finite differences; then
what the derivatives are made of (solves, never `inv(A) @ b` in the generated code; cholesky's
adjoint as matrix products, never an n^4 Jacobian), the conventions (cholesky of the symmetric
part, as JAX's; logdet by LAPACK's Cholesky where the matrix is symmetric positive definite,
slogdet elsewhere), the backends, and bad input refused with a caret.
"""
from __future__ import annotations

import numpy as np
import pytest

import einderiv
from einderiv.check import finite_difference, relative_error
from einderiv.ir.nodes import topological

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
jnp = jax.numpy

RNG = np.random.default_rng(14)


def regular(*batch, n=3):
    """Well-conditioned, not symmetric: a perturbed multiple of the identity."""
    return RNG.normal(size=(*batch, n, n)) * 0.3 + 2 * np.eye(n)


def spd(*batch, n=3):
    """Symmetric positive definite (exactly symmetric: X @ X^T is computed so)."""
    X = RNG.normal(size=(*batch, n, n))
    S = X @ np.swapaxes(X, -1, -2) + n * np.eye(n)
    return (S + np.swapaxes(S, -1, -2)) / 2


def agree(src, shapes, arrays, value, reference=None, tol=1e-10):
    """`src` at `arrays` is `value` (an array, or a function of the arrays); each gradient
    agrees with central differences of the value, each Hessian with central differences of the
    gradient; and where `reference` (a JAX function of the arrays, in order) is given, each
    gradient and Hessian with JAX's (all in one jitted function: JAX compiles a derivative of
    a solve in about a second)."""
    names = list(arrays)
    f = einderiv.compile(src, shapes)
    expected = value(*arrays.values()) if callable(value) else value
    assert relative_error(f(**arrays), expected) < tol, src
    if reference is not None:
        def derivatives(*v):
            return ([jax.grad(reference, argnums=k)(*v) for k in range(len(v))],
                    [jax.hessian(reference, argnums=k)(*v) for k in range(len(v))])
        jax_grads, jax_hessians = jax.jit(derivatives)(*arrays.values())
    for k, wrt in enumerate(names):
        g = einderiv.grad(src, wrt, shapes)
        h = einderiv.hessian(src, wrt, shapes)
        assert relative_error(g(**arrays), finite_difference(f, arrays, wrt)) < 1e-7, (src, wrt)
        assert relative_error(h(**arrays), finite_difference(g, arrays, wrt)) < 1e-6, (src, wrt)
        if reference is not None:
            assert relative_error(g(**arrays), jax_grads[k]) < tol, (src, wrt)
            assert relative_error(h(**arrays), jax_hessians[k]) < tol, (src, wrt)


# -- solve ---------------------------------------------------------------------------------

def np_solve(A, b):
    """The language's solve in numpy: b [..., n] with A's batch is a vector per matrix."""
    if b.ndim == A.ndim - 1 and A.ndim > 2:
        return np.linalg.solve(A, b[..., None])[..., 0]
    return np.linalg.solve(A, b)


def jax_solve(A, b):
    if b.ndim == A.ndim - 1 and A.ndim > 2:
        return jnp.linalg.solve(A, b[..., None])[..., 0]
    return jnp.linalg.solve(A, b)


SOLVES = [  # (shapes, right-hand side's shape, compared with JAX too)
    ({"A": ("n", "n"), "b": ("n",)}, (3,), False),
    ({"A": ("n", "n"), "b": ("n", "k")}, (3, 2), True),
    ({"A": ("s", "n", "n"), "b": ("s", "n")}, (2, 3), True),
    ({"A": ("s", "n", "n"), "b": ("s", "n", "k")}, (2, 3, 2), False),
]


@pytest.mark.parametrize("shapes,rhs,with_jax", SOLVES, ids=["vector", "columns",
                                                             "stack of vectors",
                                                             "stack of columns"])
def test_solve_value_gradient_and_hessian(shapes, rhs, with_jax):
    arrays = {"A": regular(*rhs[:len(shapes["A"]) - 2]), "b": RNG.normal(size=rhs)}
    agree("sum(sin(solve(A, b)))", shapes, arrays,
          lambda A, b: np.sum(np.sin(np_solve(A, b))),
          (lambda A, b: jnp.sum(jnp.sin(jax_solve(A, b)))) if with_jax else None)
    # the gradients are solves with A and A.mT: no inverse anywhere in their code
    for wrt in "Ab":
        g = einderiv.grad("sum(sin(solve(A, b)))", wrt, shapes)
        assert "solve(A" in g.formula and "inv(" not in g.formula, g.formula
        assert "inv" not in g.source


def test_the_generated_code_never_inverts():
    """solve(A, b) calls a solver; x @ inv(A) @ x is computed as solves, and so is its
    gradient by x and by A (the issue's example): inv(A) is never formed."""
    shapes = {"A": ("n", "n"), "x": ("n",)}
    A, x = regular(), RNG.normal(size=3)
    f = einderiv.compile("x @ inv(A) @ x", shapes)
    assert "inv" not in f.source and "solve" in f.formula
    gx = einderiv.grad("x @ inv(A) @ x", "x", shapes)
    assert gx.formula == "solve(A.T, x) + solve(A, x)"
    gA = einderiv.grad("x @ inv(A) @ x", "A", shapes)
    assert gA.formula == "-outer(solve(A.T, x), solve(A, x))"
    for g in (gx, gA):
        assert "inv" not in g.source
    inverse = np.linalg.inv(A)
    assert relative_error(gx(A=A, x=x), (inverse + inverse.T) @ x) < 1e-14
    assert relative_error(gA(A=A, x=x), -np.outer(inverse.T @ x, inverse @ x)) < 1e-14
    agree("x @ inv(A) @ x", shapes, {"A": A, "x": x}, lambda A, x: x @ np.linalg.inv(A) @ x)


def test_inv_met_on_either_axis_or_a_stack_is_a_solve():
    """inv(A) summed with a tensor over its columns is solve(A, .), over its rows
    solve(A.mT, .): a matrix of columns, a stack, inside a trace; inv's own derivative keeps
    the inverse the program computes anyway."""
    shapes = {"A": ("n", "n"), "B": ("n", "k"), "C": ("k", "n"), "S": ("s", "n", "n"),
              "T": ("s", "n")}
    A, B, C, S, T = regular(), RNG.normal(size=(3, 2)), RNG.normal(size=(2, 3)), regular(2), \
        RNG.normal(size=(2, 3))
    arrays = {"A": A, "B": B, "C": C, "S": S, "T": T}
    cases = [("inv(A) @ B", np.linalg.inv(A) @ B), ("C @ inv(A)", C @ np.linalg.inv(A)),
             ("tr(inv(A) @ B @ C)", np.trace(np.linalg.inv(A) @ B @ C)),
             ("einsum('sij,sj->si', inv(S), T)", np.einsum("sij,sj->si", np.linalg.inv(S), T)),
             ("einsum('sij,si->sj', inv(S), T)", np.einsum("sij,si->sj", np.linalg.inv(S), T))]
    for text, expected in cases:
        f = einderiv.compile(text, shapes)
        assert "inv" not in f.formula, (text, f.formula)
        assert relative_error(f(**arrays), expected) < 1e-13, text
    # (sum(inv(A)) itself is sum(solve(A, ones(n))): an axis summed alone is a solve of ones)
    assert "inv(A)" in einderiv.grad("sum(sin(inv(A)))", "A", shapes).formula
    assert "solve" not in einderiv.grad("sum(sin(inv(A)))", "A", shapes).formula
    # the Jacobian of solve(A, b) by b is inv(A) itself
    J = einderiv.jacobian("solve(A, x)", "x", {"A": ("n", "n"), "x": ("n",)})
    assert relative_error(J(A=A, x=T[0]), np.linalg.inv(A)) < 1e-14


def test_quadratic_form_of_a_stack():
    shapes = {"S": ("s", "n", "n"), "T": ("s", "n")}
    arrays = {"S": regular(2), "T": RNG.normal(size=(2, 3))}
    agree("sum(einsum('si,si->s', T, solve(S, T)) ** 2)", shapes, arrays,
          lambda S, T: np.sum(np.einsum("si,si->s", T, np_solve(S, T)) ** 2))


# -- cholesky -------------------------------------------------------------------------------

@pytest.mark.parametrize("batch", [(), (2,)])
def test_cholesky_value_gradient_and_hessian(batch):
    shapes = {"X": (*("s",) * len(batch), "n", "n")}
    X = spd(*batch)
    agree("sum(sin(cholesky(X)))", shapes, {"X": X},
          lambda X: np.sum(np.sin(np.linalg.cholesky(X))),
          (lambda X: jnp.sum(jnp.sin(jnp.linalg.cholesky(X)))) if not batch else None)
    agree("sum(cholesky(X) ** 3)", shapes, {"X": X},
          lambda X: np.sum(np.linalg.cholesky(X) ** 3))


def test_cholesky_of_the_symmetric_part_as_jax():
    """Where X is not symmetric, cholesky(X) is the factor of (X + X.T) / 2, as JAX's (numpy's
    reads the lower triangle), and its gradient is symmetric, as JAX's and PyTorch's."""
    shapes = {"X": ("n", "n")}
    X = spd() + np.triu(RNG.normal(size=(3, 3)) * 0.3, 1)
    assert not np.allclose(X, X.T)
    f = einderiv.compile("cholesky(X)", shapes)
    assert relative_error(f(X=X), jnp.linalg.cholesky(X)) < 1e-14
    assert relative_error(f(X=X), np.linalg.cholesky((X + X.T) / 2)) < 1e-14
    g = einderiv.grad("sum(sin(cholesky(X)))", "X", shapes)(X=X)
    expected = jax.grad(lambda X: jnp.sum(jnp.sin(jnp.linalg.cholesky(X))))(X)
    assert relative_error(g, expected) < 1e-12
    assert relative_error(g, g.T) < 1e-14


def test_cholesky_adjoint_is_matrix_products():
    """Murray's adjoint, inv(L).T Phi(L^T G) inv(L): its rule sums an index not on the left, so
    each term is one contraction with the adjoint, O(n^3); no tensor of rank 3 or more is in the
    gradient of a function of a matrix (the Jacobian would be n^4)."""
    g = einderiv.grad("sum(sin(cholesky(X)))", "X", {"X": ("n", "n")})
    assert all(node.rank <= 2 for root in g.roots.values() for node in topological(root))
    assert "lower_half(X)" in g.formula
    # half of logdet: the gradient is inv(X) / 2
    X = spd(n=5)
    g = einderiv.grad("sum(log(diag(cholesky(X))))", "X", {"X": ("n", "n")})
    assert relative_error(g(X=X), np.linalg.inv(X) / 2) < 1e-13


def test_summed_indices_follow_einsteins_convention(tmp_path):
    """An index not on the left of a rule is summed where Einstein would: open through a
    product and a sum whose terms both have it, summed within a term that has it alone and
    within the argument of a quotient. cholesky's rule written so (one term, a parenthesized
    sum and a division; an extra zero term without the index) gives the same derivative."""
    rules = tmp_path / "chol.rules"
    rules.write_text(
        "d cholesky(X)[i,j] / dX[k,l] = cholesky(X)[i,p] * lower_half(X)[p,j] * "
        "(inv(cholesky(X))[p,k] * inv(cholesky(X))[j,l] + inv(cholesky(X))[p,l] * "
        "inv(cholesky(X))[j,k]) / 2 + 0 * delta[i,k] * delta[j,l]\n")
    from einderiv.rulebook import default_rulebook
    from einderiv.rulebook.table import using_rules
    from einderiv.rulebook.verify import check_tables
    book = default_rulebook().copy().load(rules)
    X = spd()
    expected = einderiv.grad("sum(sin(cholesky(X)))", "X", {"X": ("n", "n")})(X=X)
    with using_rules(book):
        g = einderiv.grad("sum(sin(cholesky(X)))", "X", {"X": ("n", "n")})
        assert relative_error(g(X=X), expected) < 1e-13
    assert all(c.ok for c in check_tables(book, [str(rules)]))


# -- logdet ---------------------------------------------------------------------------------

def test_logdet_by_cholesky_where_positive_definite_and_slogdet_elsewhere():
    from einderiv.evaluate import kernels
    S = spd(n=6)
    assert kernels.logdet(S) == pytest.approx(np.linalg.slogdet(S)[1], rel=1e-14)
    assert kernels.logdet(S.astype(np.float32)).dtype == np.float32
    indefinite = S - 8 * np.eye(6)  # symmetric, det of either sign: Cholesky fails, LU does not
    assert np.any(np.linalg.eigvalsh(indefinite) < 0)
    assert kernels.logdet(indefinite) == pytest.approx(np.linalg.slogdet(indefinite)[1],
                                                       rel=1e-13)
    X = regular(n=6)
    assert kernels.logdet(X) == pytest.approx(np.linalg.slogdet(X)[1], rel=1e-14)
    shapes = {"X": ("n", "n")}
    logdet = lambda X: np.linalg.slogdet(X)[1]  # noqa: E731
    agree("logdet(X)", shapes, {"X": spd()}, logdet, lambda X: jnp.linalg.slogdet(X)[1],
          tol=1e-9)
    for M in (spd() - 5 * np.eye(3), regular()):
        agree("logdet(X)", shapes, {"X": M}, logdet)
        assert relative_error(einderiv.grad("logdet(X)", "X", shapes)(X=M),
                              np.linalg.inv(M).T) < 1e-13
    agree("sum(logdet(X))", {"X": ("s", "n", "n")}, {"X": spd(2)},
          lambda X: np.sum(logdet(X)))


# -- matrix_power ---------------------------------------------------------------------------

@pytest.mark.parametrize("k", [0, 1, 2, 3, 5, -1, -2])
def test_matrix_power(k):
    shapes = {"X": ("n", "n")}
    X = regular()
    f = einderiv.compile(f"matrix_power(X, {k})", shapes)
    assert relative_error(f(X=X), np.linalg.matrix_power(X, k)) < 1e-13
    agree(f"sum(sin(matrix_power(X, {k})))", shapes, {"X": X},
          lambda X: np.sum(np.sin(np.linalg.matrix_power(X, k))),
          (lambda X: jnp.sum(jnp.sin(jnp.linalg.matrix_power(X, k)))) if k in (3, -2) else None,
          tol=1e-9)


def test_matrix_power_of_a_stack_is_products():
    shapes = {"X": ("s", "n", "n")}
    X = regular(2)
    agree("sum(matrix_power(X, 4) ** 2)", shapes, {"X": X},
          lambda X: np.sum(np.linalg.matrix_power(X, 4) ** 2), tol=1e-9)
    formula = einderiv.compile("matrix_power(X, 4)", shapes).formula
    assert formula == "t0 = X @ X\nt0 @ t0", formula  # repeated squaring
    assert einderiv.compile("matrix_power(X, 0)", shapes)(X=X).tolist() == \
        np.broadcast_to(np.eye(3), X.shape).tolist()


# -- pinv -----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,dims,with_jax", [((4, 3), ("m", "n"), True),
                                                 ((3, 4), ("m", "n"), False),
                                                 ((2, 4, 3), ("s", "m", "n"), False)],
                         ids=["tall", "wide", "stack"])
def test_pinv_value_gradient_and_hessian(shape, dims, with_jax):
    """At matrices of full rank, where the rank is constant nearby and pinv is smooth."""
    A = RNG.normal(size=shape) + np.eye(*shape[-2:])
    agree("sum(sin(pinv(A)))", {"A": dims}, {"A": A},
          lambda A: np.sum(np.sin(np.linalg.pinv(A))),
          (lambda A: jnp.sum(jnp.sin(jnp.linalg.pinv(A)))) if with_jax else None)


def test_pinv_adjoint_is_matrix_products():
    """Golub and Pereyra's five terms, each one contraction with the adjoint: no tensor of
    rank 3 or more (the Jacobian would be m^2 n^2), and least squares through it agrees with
    solving the normal equations."""
    shapes = {"A": ("m", "n"), "y": ("m",)}
    g = einderiv.grad("sum(sin(pinv(A)))", "A", {"A": ("m", "n")})
    assert all(node.rank <= 2 for root in g.roots.values() for node in topological(root))
    A, y = RNG.normal(size=(5, 3)), RNG.normal(size=5)
    fit = einderiv.grad("sum((A @ (pinv(A) @ y) - y) ** 2)", "y", shapes)(A=A, y=y)
    normal = "sum((A @ solve(A.T @ A, A.T @ y) - y) ** 2)"
    assert relative_error(fit, einderiv.grad(normal, "y", shapes)(A=A, y=y)) < 1e-12


# -- backends -------------------------------------------------------------------------------

BACKEND_CASES = [
    ("sum(sin(solve(A, b))) + sum(sin(cholesky(P))) + tr(matrix_power(A, 3)) + b @ inv(P) @ b",
     {"A": ("n", "n"), "P": ("n", "n"), "b": ("n",)}, ("A", "P")),
    ("sum(sin(solve(S, T))) + sum(logdet(S)) + logdet(P) + sum(sin(pinv(W)))",
     {"S": ("s", "n", "n"), "T": ("s", "n"), "P": ("n", "n"), "W": ("s", "m", "n")},
     ("S", "P", "W")),
]


def _inputs(shapes):
    out = {}
    for name, shape in shapes.items():
        batch = (2,) if shape[0] == "s" else ()
        if name == "P":
            out[name] = spd()
        elif name == "W":
            out[name] = RNG.normal(size=(2, 4, 3))
        elif len(shape) - len(batch) == 2:
            out[name] = regular(*batch)
        else:
            out[name] = RNG.normal(size=(*batch, 3))
    return out


@pytest.mark.parametrize("backend", ["torch", "jax", "dask"])
@pytest.mark.parametrize("expr,shapes,wrt", BACKEND_CASES, ids=["matrices", "stacks"])
def test_backends_agree_with_numpy(backend, expr, shapes, wrt):
    from einderiv.backends import available
    if not available(backend):
        pytest.skip(f"{backend} is not installed")
    if backend == "dask" and "S" in shapes:
        pytest.skip("dask.array's solve takes 2-d matrices only, and it has no slogdet nor "
                    "pinv")
    arrays = _inputs(shapes)
    if backend == "torch":
        import torch
        to, back = torch.as_tensor, lambda t: t.numpy()
    elif backend == "jax":
        to, back = jnp.asarray, np.asarray
    else:
        import dask.array as da
        to, back = (lambda a: da.from_array(a, chunks=-1)), (lambda r: r.compute())
    converted = {k: to(v) for k, v in arrays.items()}
    for make in (einderiv.compile, lambda e, s, backend: einderiv.value_and_grad(
            e, list(wrt), s, backend=backend)):
        expected = make(expr, shapes, backend="numpy")(**arrays)
        got = make(expr, shapes, backend=backend)(**converted)
        flat = lambda r: list(r) if isinstance(r, tuple) else [r]  # noqa: E731
        for a, b in zip(flat(got), flat(expected)):  # value and gradients: (v, (g1, g2))
            for x, y in zip(flat(a), flat(b)):
                np.testing.assert_allclose(back(x), y, rtol=1e-10, atol=1e-12)


# -- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("text,shapes,error,words", [
    ("solve(B, b)", {"B": ("n", "m"), "b": ("n",)}, einderiv.ShapeError, "square matrix"),
    ("solve(A, c)", {"A": ("n", "n"), "c": ("m",)}, einderiv.ShapeError, "does not fit"),
    ("solve(S, b)", {"S": ("s", "n", "n"), "b": ("n",)}, einderiv.ShapeError, "does not fit"),
    ("solve(A)", {"A": ("n", "n")}, einderiv.ParseError, "takes 2 arguments"),
    ("cholesky(B)", {"B": ("n", "m")}, einderiv.ShapeError, "square matrix"),
    ("pinv(x)", {"x": ("n",)}, einderiv.ShapeError, "takes a matrix"),
    ("matrix_power(A, 1.5)", {"A": ("n", "n")}, einderiv.ParseError, "integer constant"),
    ("matrix_power(A, n)", {"A": ("n", "n")}, einderiv.ParseError, "integer constant"),
    ("matrix_power(B, 2)", {"B": ("n", "m")}, einderiv.ShapeError, "square matrix"),
])
def test_bad_input_is_a_clear_error_with_a_caret(text, shapes, error, words):
    with pytest.raises(error) as caught:
        einderiv.compile(text, shapes)
    assert words in caught.value.message
    assert "^" in str(caught.value)


def test_a_matrix_that_is_not_positive_definite():
    f = einderiv.compile("cholesky(X)", {"X": ("n", "n")})
    with pytest.raises(einderiv.EvaluationError):
        f(X=-np.eye(3))
