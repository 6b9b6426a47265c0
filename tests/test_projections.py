"""Products of one operand with several weights, as one product (einderiv/vectorize/projections.py):
each gate's input projection of a recurrent net with a weight per gate, batched across steps,
`X[:T] @ U_g.T + b_g`, is one product of the stacked weights, `reshape(X[:T] @ reshape(stack(U
...), (G * H, V)).T + reshape(stack(b ...), (G * H,)), (T, G, H))`, read by rows.

conftest.py checks every result here against the IR interpreter (which runs the unfused graph)
and its formula parsed back; these tests check what is fused and compare with finite
differences.
"""
import re

import numpy as np

import einderiv
from einderiv import fn, var
from einderiv.check import finite_difference, relative_error
from einderiv.ir.dims import Dim
from einderiv.ir.nodes import Contract, Delta, Var, topological
from einderiv.models import lstm_loss
from einderiv.vectorize.projections import _plan, _projection, fuse_projections

STEPS = 4
GATED = ["Wn", "Wz", "Un", "Uz", "bn", "bz"]


def _gated(U=None, inputs=None, steps=STEPS):
    """A gated recurrent unit of two gates (not an LSTM), a weight matrix per gate: the
    state `h = z * h + (1 - z) * n`, `z = sigmoid(W_z @ h + U_z @ x_t + b_z)`,
    `n = tanh(W_n @ h + U_n @ x_t + b_n)`; `U`, `inputs`: each gate's input weight (as
    applied to a vector) and inputs, where not `U_g @ X[t]`."""
    W = {g: var("W" + g, ("H", "H")) for g in "nz"}
    b = {g: var("b" + g, ("H",)) for g in "nz"}
    U = U or {g: var("U" + g, ("H", "V")).__matmul__ for g in "nz"}
    X = inputs or {g: var("X", ("T", "V")) for g in "nz"}
    h = loss = None
    for t in range(steps):
        pre = {g: U[g](X[g][t]) + b[g] for g in "nz"}
        if h is not None:
            pre = {g: W[g] @ h + pre[g] for g in "nz"}
        z, n = fn.sigmoid(pre["z"]), fn.tanh(pre["n"])
        h = (1 - z) * n if h is None else z * h + (1 - z) * n
        loss = fn.sum(h * h) if loss is None else loss + fn.sum(h * h)
    return loss


def _check(loss, g, arrays):
    f = einderiv.compile(loss, {})
    for name, value in zip(g.wrt, g(**arrays)):
        assert relative_error(value, finite_difference(f, arrays, name)) < 1e-6, name


def _gated_arrays(V=3, H=4, shapes=None, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for g in "nz":
        arrays["W" + g] = rng.normal(size=(H, H)) / 2
        arrays["U" + g] = rng.normal(size=(H, V)) / 2
        arrays["b" + g] = rng.normal(size=H) / 2
    arrays["X"] = rng.normal(size=(STEPS, V))
    for name, shape in (shapes or {}).items():
        arrays[name] = rng.normal(size=shape) / 2
    return arrays


def test_lstm_input_projections_are_one_product_of_the_stacked_weights():
    """The four gates' input projections of every step: one product with the biases, as
    hand-written code does (`X @ U.T + b`); the forget gate's, of rows 1: (it is unused at
    step 0), is computed on row 0 too. Its rows are the steps' stacked input terms (`R[t]`),
    no stack along an inner axis is built, and step 0 reads its gates' rows (`R[0][g]`)."""
    loss, weights = lstm_loss(STEPS)
    g = einderiv.grad(loss, weights)
    formula = g.formula
    fused = (f"reshape(X[:{STEPS}] @ reshape(stack(Uc, Uf, Ui, Uo), (4 * H, V)).T + "
             f"reshape(stack(bc, bf, bi, bo), (4 * H,)), ({STEPS}, 4, H))")
    assert formula.count(fused) == 1, formula
    assert not re.search(r"@ U[cfio]\.T", formula), formula
    assert "axis=1" not in formula, formula
    (name,) = re.findall(r"(t\d+) = reshape\(X\[", formula)
    picks = re.findall(rf"\b{name}\[0(?:\]\[|, )(\d)\]", formula)  # t[0][g] or t[0, g]
    assert sorted(picks) == ["0", "2", "3"], formula
    rng = np.random.default_rng(0)
    V, H = 3, 4
    arrays = {}
    for gate in "fioc":
        arrays.update({"W" + gate: rng.normal(size=(H, H)) / 2,
                       "U" + gate: rng.normal(size=(H, V)) / 2,
                       "b" + gate: rng.normal(size=H) / 2})
    arrays.update(Wy=rng.normal(size=(V, H)), by=rng.normal(size=V),
                  X=rng.normal(size=(STEPS, V)), Y=rng.normal(size=(STEPS, V)))
    _check(loss, g, arrays)


def test_a_gated_unit_of_two_gates_projects_its_inputs_in_one_product():
    loss = _gated()
    g = einderiv.grad(loss, GATED)
    assert g.formula.count(
        f"reshape(X[:{STEPS}] @ reshape(stack(Un, Uz), (2 * H, V)).T + "
        f"reshape(stack(bn, bz), (2 * H,)), ({STEPS}, 2, H))") == 1, g.formula
    assert not re.search(r"@ U[nz]\.T", g.formula), g.formula
    _check(loss, g, _gated_arrays())


def test_gates_read_whole_are_not_fused():
    """Each gate's product used whole (`tanh(X @ A.T + a)`, no per-row reads): a fused
    product's gate `P[:, g]` is strided, and elementwise work on it is slower than the calls
    saved (1000x100x200: 1.19 times the unfused gradient)."""
    expr = "sum(tanh(X @ A.T + a) * tanh(X @ B.T + b) * tanh(X @ C.T + c))"
    shapes = {"X": ("n", "v"), "a": ("h",), "b": ("h",), "c": ("h",),
              **{w: ("h", "v") for w in "ABC"}}
    g = einderiv.grad(expr, ["A", "B", "C", "X"], shapes)
    assert "stack" not in g.formula and "reshape" not in g.formula, g.formula
    for w in "ABC":
        assert f"X @ {w}.T" in g.formula, g.formula
    rng = np.random.default_rng(1)
    arrays = {"X": rng.normal(size=(5, 3)), **{w: rng.normal(size=(4, 3)) for w in "ABC"},
              **{w: rng.normal(size=4) for w in "abc"}}
    f = einderiv.compile(expr, shapes)
    for name, value in zip(["A", "B", "C", "X"], g(**arrays)):
        assert relative_error(value, finite_difference(f, arrays, name)) < 1e-6, name


def test_products_of_different_operands_are_not_fused():
    inputs = {"n": var("X", ("T", "V")), "z": var("Z", ("T", "V"))}
    loss = _gated(inputs=inputs)
    g = einderiv.grad(loss, GATED)
    assert "stack(Un, Uz)" not in g.formula and "stack(bn, bz)" not in g.formula, g.formula
    _check(loss, g, _gated_arrays(shapes={"Z": (STEPS, 3)}))


def test_weights_of_different_shapes_are_not_fused():
    # U_n given transposed, [V, H]: a product alike, of a weight of another shape
    Un = var("Un", ("V", "H"))
    loss = _gated(U={"n": lambda x: Un.T @ x, "z": var("Uz", ("H", "V")).__matmul__})
    g = einderiv.grad(loss, GATED)
    assert "stack(Un, Uz)" not in g.formula and "stack(Uz" not in g.formula, g.formula
    _check(loss, g, _gated_arrays(shapes={"Un": (3, 4)}))


def test_a_weight_that_is_no_input_is_not_fused():
    # U_z computed (tanh(M)): stacking it would stack a computed value, not an input
    M = var("M", ("H", "V"))
    loss = _gated(U={"n": var("Un", ("H", "V")).__matmul__, "z": lambda x: fn.tanh(M) @ x})
    g = einderiv.grad(loss, ["Wn", "Wz", "Un", "M", "bn", "bz"])
    assert "stack(Un" not in g.formula and "reshape(X" not in g.formula, g.formula
    arrays = _gated_arrays(shapes={"M": (4, 3)})
    del arrays["Uz"]
    _check(loss, g, arrays)


def test_products_of_rows_far_apart_are_not_fused():
    """`X[:4] @ A.T` beside `X[4:8] @ B.T`: one product would compute twice the rows asked
    for (more than MAX_WASTE times), and is not planned; `X[:7]` beside `X[1:8]` is, one
    product of rows 0..8, each a window of it."""
    X, A, B = Var("X", (8, "v")), Var("A", ("h", "v")), Var("B", ("h", "v"))

    def group(a, b):
        products = [Contract((0, 1), [(Delta(rows, 8, start), (0, 2)), (X, (2, 3)), (W, (1, 3))])
                    for W, (start, rows) in ((A, a), (B, b))]
        return products, [(n, *_projection(n)) for n in products]

    _, apart = group((0, 4), (4, 4))
    assert _plan(apart, {}, set()) is None
    products, overlapping = group((0, 7), (1, 7))
    fused, parts = _plan(overlapping, {}, set())
    assert fused.shape[0] == Dim(None, 8) and len(parts) == 2
    # Read whole, each product would be a strided window of a gate of the fused product:
    # fuse_projections leaves them apart.
    roots = dict(zip(("pa", "pb"), products))
    assert fuse_projections(roots, topological(*roots.values()))[0] is roots
