"""The generated function's signature and the LaTeX left sides say what the API says.

- The function of `.source` (and `--format python`) takes its parameters in the order the
  expression declares its variables: the order of `.inputs`, in which positional arrays of the
  API bind (an input read only for a dimension keeps its place), never alphabetical order.
  Called positionally in that order it computes what the API computes.
- A derivative's left side in `.latex` comes from what the output is (the call that made it
  and the variables it is taken by), not from its printed name: an output renamed because an
  input or a bound name of the user's has its label (`dx_1`, since an input is called `dx`)
  is still `\\frac{\\partial f}{\\partial x}`, and a user's own name that looks like a
  derivative label (`dx = tanh(x * y)`) is typeset as a name.
"""
from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

import einderiv
from einderiv.cli import main
from einderiv.generate.latex import format_latex, mathtext_lines

RNG = np.random.default_rng(0)


def _module_function(result):
    """The function `result.source` defines, compiled on its own."""
    namespace: dict = {}
    exec(result.source, namespace)  # our own generated module
    return namespace[result._generated().function]


def _parameters(result) -> list[str]:
    return list(inspect.signature(_module_function(result)).parameters)


def _arrays(shapes: dict, sizes: dict) -> dict:
    return {name: RNG.standard_normal(tuple(sizes[d] for d in shape)) + 2.0
            for name, shape in shapes.items()}


def _flat(value) -> list:
    if isinstance(value, (tuple, list)):
        return [a for v in value for a in _flat(v)]
    return [np.asarray(value)]


# -- the generated function's parameters follow the declared order ---------------------------

SIZES = {"n": 3, "m": 4, "p": 2}
# (name, how the result is made, shapes in declared order): names out of alphabetical order
CASES = [
    ("grad", lambda s: einderiv.grad("sum(exp(z) * a)", "z", s),
     {"z": ("n",), "a": ("n",)}),
    ("grad several wrt", lambda s: einderiv.grad("sum(w * tanh(c * w) + b * c)", ["c", "w"], s),
     {"w": ("n",), "c": ("n",), "b": ("n",)}),
    ("value_and_grad", lambda s: einderiv.value_and_grad("sum(y * log(1 + exp(-(X @ w))))",
                                                         "w", s),
     {"y": ("m",), "X": ("m", "n"), "w": ("n",)}),
    ("jacobian", lambda s: einderiv.jacobian("tanh(W @ x + b)", ["x", "b"], s),
     {"x": ("n",), "W": ("m", "n"), "b": ("m",)}),
    ("hessian", lambda s: einderiv.hessian("sum(z * z * a * a * a) + sum(c * z)", ["z", "a"], s),
     {"z": ("n",), "c": ("n",), "a": ("n",)}),
    ("compile", lambda s: einderiv.compile("W @ x + b", s),
     {"x": ("n",), "b": ("m",), "W": ("m", "n")}),
    ("compile scalar", lambda s: einderiv.compile("sum(z * a) * k", s),
     {"z": ("n",), "k": (), "a": ("n",)}),
    # q is read only for its length m: it keeps its place among the parameters
    ("dimension only", lambda s: einderiv.grad("sum(q[:p] * b)", "q", s),
     {"q": ("m",), "b": ("p",)}),
    ("dimension only, last", lambda s: einderiv.grad("sum(q[:p] * b)", "q", s),
     {"b": ("p",), "q": ("m",)}),
]


@pytest.mark.parametrize("name,make,shapes", CASES, ids=[c[0] for c in CASES])
def test_the_parameters_are_the_inputs_in_declared_order(name, make, shapes):
    result = make(shapes)
    assert _parameters(result) == list(result.inputs)
    declared = list(shapes)
    assert list(result.inputs) == [n for n in declared if n in result.inputs]
    assert result._generated().arguments == list(result.inputs)


@pytest.mark.parametrize("name,make,shapes", CASES, ids=[c[0] for c in CASES])
def test_a_positional_call_of_the_generated_function_is_the_api_call(name, make, shapes):
    result = make(shapes)
    arrays = _arrays(shapes, SIZES)
    # the printed module, called with the arrays of .inputs in order
    printed = _module_function(result)(*[arrays[k] for k in result.inputs])
    # the API, called positionally in the declared order and by keyword
    by_position = result(*[arrays[k] for k in shapes])
    by_keyword = result(**arrays)
    ours = _flat(printed)
    flat_position = _flat(by_position)
    # the API may return a repeated entry again; the module computes each output once
    assert len(ours) == result._generated().outputs
    for k, p in enumerate(result.positions):
        np.testing.assert_allclose(flat_position[k], ours[p], rtol=1e-12)
    for a, b in zip(_flat(by_keyword), flat_position):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_the_documented_example_is_not_computed_with_the_inputs_swapped():
    g = einderiv.grad("sum(exp(z) * a)", "z", {"z": ("n",), "a": ("n",)})
    assert "def grad(z, a):" in g.source
    z, a = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    np.testing.assert_allclose(_module_function(g)(z, a), np.exp(z) * a)
    np.testing.assert_allclose(g(z, a), np.exp(z) * a)


def test_an_einderiv_var_expression_takes_its_variables_in_the_order_made():
    z = einderiv.var("z", ("n",))
    a = einderiv.var("a", ("n",))
    loss = (einderiv.fn.exp(z) * a).sum()
    g = einderiv.grad(loss, z)
    assert list(g.inputs) == ["z", "a"]
    assert _parameters(g) == ["z", "a"]
    zs, as_ = np.array([0.5, 1.0]), np.array([2.0, -1.0])
    np.testing.assert_allclose(_module_function(g)(zs, as_), np.exp(zs) * as_)
    np.testing.assert_allclose(g(zs, as_), np.exp(zs) * as_)


def test_an_input_the_results_do_not_use_is_no_parameter():
    """The Hessian of `x @ A @ x` by x needs only A: x is left out of `.inputs` and of the
    parameters alike, and the positional API call still takes every array in order."""
    h = einderiv.hessian("x @ A @ x", "x", {"x": ("n",), "A": ("n", "n")})
    assert list(h.inputs) == ["A"] and _parameters(h) == ["A"]
    A = np.array([[1.0, 2.0], [3.0, 5.0]])
    np.testing.assert_allclose(_module_function(h)(A), A + A.T)
    np.testing.assert_allclose(h(np.zeros(2), A), A + A.T)


def test_the_command_line_module_takes_the_json_inputs_in_order(capsys):
    args = ["grad", "sum(exp(z) * a * b)", "--wrt", "z", "--shape", "z=n", "--shape", "a=n",
            "--shape", "b=n"]
    assert main([*args, "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    inputs = list(document["inputs"])
    assert inputs == ["z", "a", "b"]
    assert main([*args, "--format", "python"]) == 0
    printed = capsys.readouterr().out
    assert f"def grad({', '.join(inputs)}):" in printed


# -- LaTeX: a derivative is labelled as what it is ----------------------------------------------

def _rows(result) -> list[str]:
    return mathtext_lines(result.latex)


def _left_sides(result) -> list[str]:
    return [row.split(" = ", 1)[0] for row in _rows(result)]


DX = r"\frac{\partial f}{\partial x}"
DXDX = r"\frac{\partial^2 f}{\partial x\,\partial x}"


@pytest.mark.parametrize("other", ["v", "dx", "dx_1", "d2x", "dfdx", "out", "dxdx"])
def test_a_gradient_is_a_partial_derivative_whatever_the_other_input_is_called(other):
    g = einderiv.grad(f"sum({other} * x ** 2)", "x", {"x": ("n",), other: ("n",)})
    assert _left_sides(g) == [DX]


@pytest.mark.parametrize("other", ["v", "dx", "out", "out_1"])
def test_value_and_grad_labels_the_value_and_the_gradient(other):
    g = einderiv.value_and_grad(f"sum({other} * x ** 2)", "x", {"x": ("n",), other: ("n",)})
    assert _left_sides(g) == ["f", DX]


@pytest.mark.parametrize("other", ["v", "dx"])
def test_a_jacobian_is_a_partial_derivative_whatever_the_other_input_is_called(other):
    j = einderiv.jacobian(f"{other} * x ** 2", "x", {"x": ("n",), other: ("n",)})
    assert _left_sides(j) == [DX]


@pytest.mark.parametrize("other", ["v", "dx", "dxdx", "dxdx_1", "d2x"])
def test_a_hessian_is_a_second_partial_derivative_whatever_the_other_input_is_called(other):
    h = einderiv.hessian(f"sum({other} * x ** 3)", "x", {"x": ("n",), other: ("n",)})
    assert _left_sides(h) == [DXDX]


def test_hessian_blocks_by_two_variables_when_an_input_has_a_blocks_label():
    h = einderiv.hessian("sum(dxdy * x ** 3 * y)", ["x", "y"],
                         {"x": ("n",), "y": ("n",), "dxdy": ("n",)})
    lefts = _left_sides(h)
    for a, b in [("x", "x"), ("x", "y"), ("y", "x"), ("y", "y")]:
        assert rf"\frac{{\partial^2 f}}{{\partial {a}\,\partial {b}}}" in lefts
    assert not any(r"\mathit{dxdy}_{1}" in left for left in lefts)


def test_hessian_blocks_whose_labels_read_two_ways():
    """By x and xdx the off-diagonal blocks are both labelled `dxdxdx` (the second renamed):
    each is the block it is, by its place."""
    h = einderiv.hessian("sum(x * xdx ** 2 * x)", ["x", "xdx"], {"x": ("n",), "xdx": ("n",)})
    rows = dict(row.split(" = ", 1) for row in _rows(h))
    xdx = r"\mathit{xdx}"
    assert rows[rf"\frac{{\partial^2 f}}{{\partial x\,\partial {xdx}}}"] == \
        rf"\operatorname{{diag}}\left(4 x \odot {xdx}\right)"
    assert rows[rf"\frac{{\partial^2 f}}{{\partial {xdx}\,\partial x}}"] == \
        rf"\frac{{\partial^2 f}}{{\partial x\,\partial {xdx}}}"
    assert rows[DXDX] == rf"\operatorname{{diag}}\left(2 {xdx}^{{2}}\right)"
    assert rows[rf"\frac{{\partial^2 f}}{{\partial {xdx}\,\partial {xdx}}}"] == \
        r"\operatorname{diag}\left(2 x^{2}\right)"


def test_the_value_symbol_gives_way_to_an_input_named_f_when_renamed_too():
    g = einderiv.grad("sum(f * dx * x ** 2)", "x", {"x": ("n",), "f": ("n",), "dx": ("n",)})
    assert _left_sides(g) == [r"\frac{\partial F}{\partial x}"]


def test_a_bound_name_that_looks_like_a_label_stays_a_name():
    g = einderiv.grad("dx = tanh(x * y)\nsum(dx * x)", "x", {"x": ("n",), "y": ("n",)})
    lefts = _left_sides(g)
    assert r"\mathit{dx}" in lefts and lefts[-1] == DX
    assert lefts.count(DX) == 1
    f = einderiv.compile("dx = tanh(x * y)", {"x": ("n",), "y": ("n",)})
    assert _left_sides(f) == [r"\mathit{dx}"]  # the user's name, no differential
    f = einderiv.compile("dxdy = x * y", {"x": ("n",), "y": ("n",)})
    assert _left_sides(f) == [r"\mathit{dxdy}"]


def test_a_bound_name_out_is_not_the_value():
    f = einderiv.compile("out = tanh(x * y)\nsum(out) + sum(out * out)",
                         {"x": ("n",), "y": ("n",)})
    assert _left_sides(f) == [r"\mathit{out}", "f"]
    f = einderiv.compile("sum(out * y)", {"out": ("n",), "y": ("n",)})
    assert _left_sides(f) == ["f"]


def test_a_vjp_cotangent_keeps_its_differential_when_renamed():
    v = einderiv.vjp("dx * x", "x", {"x": ("n",), "dx": ("n",)})
    assert _left_sides(v) == [r"\mathrm{d}x"]


def test_a_label_that_reads_two_ways_is_never_the_wrong_derivative():
    """With inputs x, dx and x_1, the gradient by x is labelled `dx_1` (dx is taken), as the
    gradient by x_1 is: the output's printed name cannot tell which. Given the variables the
    call was taken by, the label is exact; without, it is not a derivative by the other."""
    shapes = {"x": ("n",), "dx": ("n",), "x_1": ("n",)}
    for wrt, other in [("x", "x_{1}"), ("x_1", "x")]:
        g = einderiv.grad("sum(dx * x ** 2 * x_1)", wrt, shapes)
        assert [name for name, _ in g.program.outputs] == ["dx_1"]
        assert rf"\partial {other}}}" not in g.latex
        exact = format_latex(g.program, "grad", g.rules, wrt=(wrt,))
        mine = "x" if wrt == "x" else "x_{1}"
        assert rf"\frac{{\partial f}}{{\partial {mine}}}" in exact
        assert rf"\partial {other}}}" not in exact


def test_the_labels_read_off_renamed_labels_agree_with_the_call():
    """Without `wrt`, the variables are read off the labels the call made; where they tell,
    they are those of the call."""
    shapes = {"x": ("n",), "y": ("m",), "dx": ("n",), "dy": ("m",), "dydx": ("m",)}
    h = einderiv.hessian("sum(dx * x ** 3) * sum(dy * y * dydx)", ["x", "y"], shapes)
    read = format_latex(h.program, "hessian", h.rules)
    told = format_latex(h.program, "hessian", h.rules, wrt=("x", "y"))
    assert read == told == h.latex
    for a, b in [("x", "x"), ("x", "y"), ("y", "x"), ("y", "y")]:
        assert rf"\frac{{\partial^2 f}}{{\partial {a}\,\partial {b}}}" in told
