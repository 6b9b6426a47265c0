"""The per-signature fast path of a call (generate/function.py `_guard`) covers exactly the
calls the checked path would let through unconverted, and returns what it would return."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import einderiv
from einderiv.generate.function import MISS


def _grad():
    g = einderiv.grad("sum(exp(x) * y)", "x", {"x": ("n",), "y": ("n",)})
    x, y = np.linspace(0, 1, 4), np.linspace(1, 2, 4)
    g(x=x, y=y)
    assert g._function.guarded is not None  # the first signature is guarded
    return g, x, y


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix, on purpose
def test_the_guard_takes_its_own_signature_and_no_other():
    g, x, y = _grad()
    guarded = g._function.guarded
    assert guarded({"x": x, "y": y}) is not MISS
    for other in ({"x": x}, {"x": x, "y": y, "z": y}, {"x": x, "z": y},
                  {"x": x.astype(np.float32), "y": y}, {"x": np.linspace(0, 1, 5), "y": y},
                  {"x": np.matrix(x), "y": y}, {"x": list(x), "y": y}):
        assert guarded(other) is MISS, other


def test_calls_the_guard_misses_go_the_checked_way_with_the_same_results():
    g, x, y = _grad()
    want = np.exp(x) * y
    np.testing.assert_allclose(g(x=x, y=y), want)
    np.testing.assert_allclose(g(x, y), want)  # positional, bound to the same names
    x32 = x.astype(np.float32)
    got = g(x=x32, y=y)  # mixed precision: computed in the wider dtype
    assert got.dtype == np.float64
    with pytest.raises(einderiv.ShapeError):
        g(x=np.ones(5), y=y)
    with pytest.raises(einderiv.InputError):
        g(x=x, y=y, z=y)


def test_an_array_changed_in_place_is_checked_again():
    g, x, y = _grad()
    x2 = x.copy()
    g(x=x2, y=y)
    x2.shape = (2, 2)  # the same object, another shape: the guard must not pass it
    with pytest.raises(einderiv.ShapeError):
        g(x=x2, y=y)


def test_a_result_that_is_an_input_or_a_view_of_one_is_a_copy():
    g = einderiv.grad("sum(x * y)", "x", {"x": ("n",), "y": ("n",)})  # the gradient is y
    x, y = np.ones(3), np.arange(3.0)
    for _ in range(3):  # the first call and the guarded ones
        got = g(x=x, y=y)
        assert got is not y and not np.shares_memory(got, y)
        got[0] = 99.0
        assert y[0] == 0.0
    m = einderiv.grad("sum(A * B)", ["A", "B"], {"A": ("n", "n"), "B": ("n", "n")})
    A, B = np.eye(2), np.ones((2, 2))
    for _ in range(3):
        dA, dB = m(A=A, B=B)
        assert not np.shares_memory(dA, B) and not np.shares_memory(dB, A)
        assert not np.shares_memory(dA, dB)


def test_several_results_that_share_memory_are_apart():
    # the gradient of sum(x * x) by x twice over is one array: two results, never one object
    g = einderiv.grad("sum(x * x)", ["x", "x"], {"x": ("n",)})
    x = np.arange(3.0)
    for _ in range(3):
        a, b = g(x=x)
        assert a is not b and not np.shares_memory(a, b)
        np.testing.assert_allclose(a, 2 * x)


def test_results_of_many_inputs_are_apart_from_them_and_from_each_other():
    # Past 4 inputs or outputs the guard compares ids in sets: results that are inputs
    # (d/da0 of a0 * a1 is a1), one input twice (c), and one array for two inputs.
    names = ["a0", "a1", "a2", "a3", "a4", "a5", "c"]
    g = einderiv.grad("sum(a0 * a1) + sum(a2 * a3) + sum(a4 * a5) + sum(a0 * c) + sum(a2 * c)",
                      ["a0", "a1", "a2", "a3", "a4", "a5"], {n: ("n",) for n in names})
    arrays = {n: np.full(3, float(k + 1)) for k, n in enumerate(names)}
    shared = np.arange(3.0)
    for given in (arrays, {**arrays, "a4": shared, "a5": shared}):
        for _ in range(3):  # the first call and the guarded ones
            results = g(**given)
            for k, r in enumerate(results):
                assert not any(np.shares_memory(r, v) for v in given.values()), k
                assert not any(np.shares_memory(r, o) for o in results if o is not r), k
            np.testing.assert_allclose(results[1], given["a0"])
            np.testing.assert_allclose(results[0], given["a1"] + given["c"])
            np.testing.assert_allclose(results[4], given["a5"])


def test_the_guard_of_an_expression_without_inputs():
    f = einderiv.compile("eye(2, 3)", {})
    for _ in range(3):
        np.testing.assert_array_equal(f(), np.eye(2, 3))


def test_an_evaluation_error_on_the_guarded_path_is_ours():
    f = einderiv.compile("inv(A)", {"A": ("n", "n")})
    f(A=np.eye(2))
    with pytest.raises(einderiv.EinderivError):
        f(A=np.zeros((2, 2)))  # singular: numpy's LinAlgError, reported as ours


def test_threads_share_one_guard():
    g, x, y = _grad()
    inputs = [(np.linspace(0, k, 4), np.linspace(k, 1, 4)) for k in range(8)]
    wrong = []

    def work(a, b):
        for _ in range(200):
            if not np.allclose(g(x=a, y=b), np.exp(a) * b):
                wrong.append((a, b))
    threads = [threading.Thread(target=work, args=ab) for ab in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


def test_input_names_are_values_of_the_guard_never_its_source():
    # names that are not identifiers of the guard's code (keywords, `self`, a name like one of
    # its locals) still work
    g = einderiv.grad("sum(r * arrays * self)", "r", {"r": ("n",), "arrays": ("n",),
                                                      "self": ("n",)})
    r, a, s = np.ones(2), np.full(2, 2.0), np.full(2, 3.0)
    for _ in range(3):
        np.testing.assert_allclose(g(r=r, arrays=a, self=s), a * s)


@pytest.mark.parametrize("make, want", [
    (lambda s: einderiv.grad("sum(x * x * y)", "x", s), lambda x, y: 2 * x * y),
    (lambda s: einderiv.grad("sum(x * x * y)", ["x"], s), lambda x, y: (2 * x * y,)),
    (lambda s: einderiv.grad("sum(x * x * y)", ["x", "y"], s),
     lambda x, y: (2 * x * y, x * x)),
    (lambda s: einderiv.grad("sum(x * x * y)", ["y", "x"], s),
     lambda x, y: (x * x, 2 * x * y)),
    (lambda s: einderiv.grad("sum(x * x * y)", ["x", "x"], s),
     lambda x, y: (2 * x * y, 2 * x * y)),
    (lambda s: einderiv.value_and_grad("sum(x * x * y)", "x", s),
     lambda x, y: (np.sum(x * x * y), 2 * x * y)),
    (lambda s: einderiv.compile("x * y", s), lambda x, y: x * y),
])
def test_the_calls_fast_path_returns_what_the_checked_path_returns(make, want):
    # (where the guard's result is the call's, the call returns it as it is: one array as
    # itself, several in a tuple, and a variable asked twice as two arrays)
    f = make({"x": ("n",), "y": ("n",)})
    x, y = np.linspace(0, 1, 4), np.linspace(1, 2, 4)
    first = f(x=x, y=y)
    for got in (first, f(x=x, y=y), f(x=x, y=y), f(x, y)):
        expected = want(x, y)
        assert type(got) is type(expected)
        if isinstance(expected, tuple):
            assert len(got) == len(expected)
            for a, b in zip(got, expected):
                np.testing.assert_allclose(a, b, rtol=1e-15)
            arrays = [a for a in got if isinstance(a, np.ndarray)]
            assert len({id(a) for a in arrays}) == len(arrays)  # apart
        else:
            np.testing.assert_allclose(got, expected, rtol=1e-15)
    with pytest.raises(einderiv.InputError):  # a call the fast path does not cover
        f(x=x, y=y, z=y)
    with pytest.raises(einderiv.ShapeError):
        f(x=np.ones(5), y=y)


@pytest.mark.parametrize("expr, wrt", [
    ("sum(A @ x) + sum(x * x)", ["A", "x"]),  # operators and a sum, made where returned
    ("x @ A @ x", ["x", "A"]),
    ("sum(A * A) + x @ x", ["A", "x", "A"]),  # one output asked twice
    ("tr(A @ B)", ["A", "B"]),  # transposes of the inputs: views, copied
    ("sum(A @ B) + sum(x)", ["B", "x", "A"]),
])
def test_outputs_made_where_returned_are_new_and_the_others_copies(expr, wrt):
    # (the guard checks only type and dtype of an output made by an operator where it is
    # returned: what it returns must still share no memory with an input or another output)
    g = einderiv.grad(expr, wrt, {"A": ("n", "n"), "B": ("n", "n"), "x": ("n",)})
    rng = np.random.default_rng(0)
    arrays = {"A": rng.normal(size=(3, 3)), "B": rng.normal(size=(3, 3)),
              "x": rng.normal(size=3)}
    arrays = {k: v for k, v in arrays.items() if k in g.inputs}
    want = g.evaluate_ir(**arrays)
    for _ in range(3):
        got = g(**arrays)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-13)
        for i, a in enumerate(got):
            assert type(a) is np.ndarray and a.flags.writeable
            assert not any(np.shares_memory(a, v) for v in arrays.values())
            assert not any(np.shares_memory(a, b) for b in got[:i])


# --- the call's entry: after the first unconverted signature, calling a result calls that
# signature's guard directly (api `_Result.__call__`, a property reading `_call`; the guard
# made by `GeneratedFunction.entry`), which hands every other call to the method as it came.

def test_the_entry_is_set_after_the_first_signature_and_reads_positions_too():
    g, x, y = _grad()
    assert "_call" in vars(g)  # the instance's own: the guard of the first signature
    want = np.exp(x) * y
    for got in (g(x=x, y=y), g(y=y, x=x), g(x, y), g(x, y=y)):
        np.testing.assert_allclose(got, want, rtol=1e-15)
    # positions bind in the declared order; a swap is another call, not the same arrays
    np.testing.assert_allclose(g(y, x), np.exp(y) * x, rtol=1e-15)


@pytest.mark.parametrize("args, kwargs, error", [
    ((1,), {}, einderiv.InputError),  # too few positional arrays: y is missing
    ((0, 1, 2), {}, einderiv.InputError),  # more positional arrays than variables
    ((0,), {"x": 0}, einderiv.InputError),  # x given twice
    ((0, 1), {"z": 0}, einderiv.InputError),  # an unknown name
    ((), {"x": 0}, einderiv.InputError),  # y missing, by keyword
])
def test_calls_the_entry_misses_raise_what_the_method_raises(args, kwargs, error):
    g, x, y = _grad()
    arrays = [x, y, x]
    with pytest.raises(error):
        g(*[arrays[i] for i in args], **{k: arrays[v] for k, v in kwargs.items()})
    np.testing.assert_allclose(g(x, y), np.exp(x) * y, rtol=1e-15)  # still the fast one


def test_the_entry_passes_other_types_dtypes_and_shapes_to_the_checked_path():
    g, x, y = _grad()
    got = g(x.astype(np.float32), y.astype(np.float32))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, np.exp(x) * y, rtol=1e-6)
    np.testing.assert_allclose(g(list(x), y), np.exp(x) * y, rtol=1e-15)
    x5, y5 = np.linspace(0, 1, 5), np.linspace(1, 2, 5)
    np.testing.assert_allclose(g(x5, y5), np.exp(x5) * y5, rtol=1e-15)
    with pytest.raises(einderiv.ShapeError):
        g(x5, y)


def test_positional_results_that_are_inputs_are_copies():
    g = einderiv.grad("sum(x * y)", "x", {"x": ("n",), "y": ("n",)})  # the gradient is y
    x, y = np.ones(3), np.arange(3.0)
    for _ in range(3):
        got = g(x, y)
        assert got is not y and not np.shares_memory(got, y)
        np.testing.assert_array_equal(got, y)


def test_input_names_of_the_entrys_own_parameters():
    # `args` and `arrays` are the entry's parameters (`entry(*args, **arrays)`), `self` the
    # method's: as keywords they are still inputs, and by position they bind as declared
    g = einderiv.grad("args: [n]; arrays: [n]; self: [n]; sum(args * arrays * self)", "args")
    a, b, c = np.ones(2), np.full(2, 2.0), np.full(2, 3.0)
    for _ in range(3):
        np.testing.assert_allclose(g(args=a, arrays=b, self=c), b * c)
        np.testing.assert_allclose(g(a, b, c), b * c)
        np.testing.assert_allclose(g(a, arrays=b, self=c), b * c)


def test_a_result_has_its_call_signature():
    import inspect
    g, x, y = _grad()
    assert str(inspect.signature(g)) == "(*args, **arrays)"
    assert "positional" in type(g).__call__.__doc__
    assert "lowered" in inspect.signature(type(g)).parameters  # the class: its constructor's


def _result_called_twice():
    import weakref
    g, x, y = _grad()
    g(x, y)
    return weakref.ref(g), weakref.ref(g._function)


# (the suite-wide round trip keeps every result it sees, to check it after the test)
@pytest.mark.no_roundtrip
def test_a_result_is_freed():
    import gc
    references = _result_called_twice()  # (its bound entry is a cycle: the collector's)
    gc.collect()
    assert all(reference() is None for reference in references)


@pytest.mark.parametrize("make", [
    lambda: einderiv.hvp("x: [n]; A: [n, n]; x @ A @ x", "x"),
    lambda: einderiv.hvp("x: [n]; A: [n, n]; x @ A @ x", ["x", "A"]),
    lambda: einderiv.jvp("x: [n]; A: [n, n]; A @ x", "x"),
    lambda: einderiv.vjp("x: [n]; A: [n, n]; A @ x", "x"),
    lambda: einderiv.vjp("x: [n]; A: [n, n]; A @ x", ["A", "x"]),
])
def test_products_with_a_direction_take_the_entry_through_their_own_call(make):
    f = make()
    rng = np.random.default_rng(0)
    arrays = {"x": rng.normal(size=3), "A": rng.normal(size=(3, 3))}
    keyword = f.keyword
    direction = [rng.normal(size=(3,) * len(f.lowered.declared[d])) for d in f.directions]
    given = tuple(direction) if f._many else direction[0]
    want = f.evaluate_ir(**arrays, **{keyword: given})
    for _ in range(3):
        got = f(**arrays, **{keyword: given})
        for a, b in zip(*(([got], [want]) if isinstance(want, np.ndarray) else (got, want))):
            np.testing.assert_allclose(a, b, rtol=1e-13)
    assert "_call" in vars(f)  # its own call's keywords reach the entry


def test_threads_calling_by_position_and_keyword_with_two_signatures():
    g, x, y = _grad()
    wrong = []

    def work(k):
        a = np.linspace(0, k, 4).astype(np.float32 if k % 2 else np.float64)
        b = np.linspace(k, 1, 4).astype(a.dtype)
        for i in range(200):
            got = g(a, b) if i % 2 else g(x=a, y=b)
            if got.dtype != a.dtype or not np.allclose(got, np.exp(a) * b, rtol=1e-6):
                wrong.append((k, i))
    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


# --- the entry's keyword parameters: the inputs bind by name, without a dict of their own
# (generate/function.py `_guard(keywords=True)`; names that are the entry's own locals keep
# the entry that reads a dict)

@pytest.mark.parametrize("a, b", [("x", "y"), ("rest", "y"), ("_p1", "_p0"), ("a0", "a1"),
                                  ("_given", "_MISS"), ("r", "e"), ("args", "_result")])
def test_every_call_form_with_keyword_parameters(a, b):
    g = einderiv.grad(f"sum(exp({a}) * {b})", a, {a: ("n",), b: ("n",)})
    x, y = np.linspace(0, 1, 3), np.linspace(1, 2, 3)
    want = np.exp(x) * y
    for _ in range(3):
        np.testing.assert_allclose(g(**{a: x, b: y}), want, rtol=1e-15)
        np.testing.assert_allclose(g(**{b: y, a: x}), want, rtol=1e-15)
        np.testing.assert_allclose(g(x, y), want, rtol=1e-15)
        np.testing.assert_allclose(g(x, **{b: y}), want, rtol=1e-15)
        np.testing.assert_allclose(g(**{a: y, b: x}), np.exp(y) * x, rtol=1e-15)
    for args, kwargs in [((), {a: x}), ((), {b: y}), ((x,), {a: x}), ((x, y), {"z": x}),
                         ((), {a: x, b: y, "z": x}), ((x, y, x), {})]:
        with pytest.raises(einderiv.InputError):
            g(*args, **kwargs)
    np.testing.assert_allclose(g(**{a: x, b: y}), want, rtol=1e-15)  # the entry still holds


def test_the_entry_binds_keywords_as_parameters_named_as_the_inputs():
    g = einderiv.grad("sum(exp(x) * y)", "x", {"x": ("n",), "y": ("n",)})
    x, y = np.linspace(0, 1, 3), np.linspace(1, 2, 3)
    g(x=x, y=y)
    code = g._call.__func__.__code__
    assert code.co_kwonlyargcount == 2
    assert code.co_varnames[code.co_argcount:code.co_argcount + 2] == ("x", "y")
    # an input named as one of the entry's locals: the entry that reads a dict
    h = einderiv.grad("sum(exp(rest) * y)", "rest", {"rest": ("n",), "y": ("n",)})
    h(rest=x, y=y)
    assert h._call.__func__.__code__.co_kwonlyargcount == 0
    np.testing.assert_allclose(h(rest=x, y=y), np.exp(x) * y, rtol=1e-15)
