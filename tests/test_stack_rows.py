"""A stack whose rows are a run of another stack's rows is a slice of it (vectorize/share.py).

An RNN's `dW = sum_t outer(dz_t, h_{t-1})` stacks dz_1..dz_{T-1}, and `dU` and `db` stack
dz_0..dz_{T-1}: the program builds the longer stack once and reads `dW`'s rows as its slice
`[1:]` (issue 13). Values are checked by conftest.py for every result here too (the generated
code against the IR interpreter, and the formula parsed back).
"""
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import einderiv
from einderiv.parse import ast
from einderiv.parse.parser import parse
from einderiv.parse.unparse import unparse
from einderiv.vectorize.share import finish

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import problems  # noqa: E402


def _stacks(source: str) -> list[list[str]]:
    """The rows of each `_kernels.stack([...])` the generated code builds."""
    return [[r.strip() for r in rows.split(",")]
            for rows in re.findall(r"_kernels\.stack\(\[([^\]]*)\]", source)]


def _runs(stacks: list) -> list:
    """Pairs of stacks where one's rows are a contiguous run of the other's."""
    found = []
    for small in stacks:
        for big in stacks:
            if small is not big and len(small) <= len(big) and any(
                    big[a:a + len(small)] == small for a in range(len(big) - len(small) + 1)):
                found.append((small, big))
    return found


@pytest.mark.parametrize("model", ["rnn", "lstm", "lstm_stacked"])
def test_a_run_of_a_stacks_rows_is_its_slice(model):
    inst = getattr(problems, model)(5, 3, 6)
    expr, shapes = inst.einderiv()
    g = einderiv.grad(expr, inst.wrt, shapes)
    assert _runs(_stacks(g.source)) == []
    got = g(**{**inst.params, **inst.data})
    for a, b in zip(got, inst.hand(inst.params, inst.data)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_the_rnn_weight_gradient_reads_the_stack_of_the_input_weights():
    inst = problems.rnn(5, 3, 6)
    expr, shapes = inst.einderiv()
    source = einderiv.grad(expr, inst.wrt, shapes).source
    (returned,) = [line for line in source.splitlines() if line.strip().startswith("return")]
    assert "stack" not in returned, returned
    # dW = t[1:].T @ H[:T-1], dU = t.T @ X, db = sum(t, axis=0): one stack t of the dz_t
    # (products of matrices as numpy's dot: see generate/python.py)
    assert re.match(r"\s*return \(_xp\.dot\((t\d+)\[1:\]\.T, \S+\), _xp\.dot\(\1\.T, \S+\), "
                    r"_kernels\.array_sum\(\1, _xp, axis=0\), ", returned), returned
    assert len(_stacks(source)) == 3  # h_t, the pre-activations (for sech2), dz_t


# Programs given to `finish` directly: temporaries `t<k> = ...`, then the outputs.
SHAPES = {n: ("n",) for n in "abcd"}
SHAPES.update(x=(2,), y=(4,), z=(3,))


def _finish(lines: list[str], outputs: list[str]):
    temporaries = [(s.name, s.value) for s in parse("\n".join(lines)).statements] if lines \
        else []
    outs = [(f"o{k}", parse(o).statements[0]) for k, o in enumerate(outputs)]
    outs = [(name, getattr(e, "value", e)) for name, e in outs]
    return finish(temporaries, outs, set(SHAPES))


def _text(temporaries, expr) -> str:
    return "\n".join([f"{n} = {unparse(e, limit=None, max_depth=None)}" for n, e in temporaries]
                     + [unparse(expr, limit=None, max_depth=None)])


def _check(lines: list[str], outputs: list[str]):
    """The finished program's lines and outputs as text, after checking that each output has
    the value it had before."""
    temporaries, outs = _finish(lines, outputs)
    rng = np.random.default_rng(0)
    arrays = {k: rng.normal(size=tuple(3 if d == "n" else d for d in s))
              for k, s in SHAPES.items()}
    for before, (_, after) in zip(outputs, outs):
        want = einderiv.compile("\n".join(lines + [before]), SHAPES)
        got = einderiv.compile(_text(temporaries, after), SHAPES)
        np.testing.assert_allclose(got(**{k: arrays[k] for k in got.inputs}),
                                   want(**{k: arrays[k] for k in want.inputs}), rtol=1e-12)
    return [f"{n} = {unparse(e)}" for n, e in temporaries], [unparse(e) for _, e in outs]


def test_runs_of_rows_in_the_same_order_are_slices():
    temps, outs = _check(["t0 = stack(a, b, c, d)", "t1 = stack(b, c).T @ x"],
                         ["t0.T @ y", "t1", "stack(a, b, c).T @ z", "stack(b, c, d).T @ z",
                          "sum(stack(c, d), axis=0)"])
    assert temps == ["t0 = stack(a, b, c, d)", "t1 = t0[1:3].T @ x"]
    assert outs == ["t0.T @ y", "t1", "t0[:3].T @ z", "t0[1:].T @ z", "sum(t0[2:], axis=0)"]


def test_rows_out_of_order_apart_or_scaled_are_stacked_again():
    temps, outs = _check(["t0 = stack(a, b, c, d)"],
                         ["t0.T @ y", "stack(c, b).T @ x", "stack(a, c).T @ x",
                          "stack(b, 2 * c).T @ x", "stack(d, a).T @ x", "stack(a, a).T @ x"])
    assert temps == ["t0 = stack(a, b, c, d)"]
    assert outs[1:] == ["stack(c, b).T @ x", "stack(a, c).T @ x", "stack(b, 2 * c).T @ x",
                        "stack(d, a).T @ x", "stack(a, a).T @ x"]


def test_a_stack_built_later_is_not_sliced_earlier():
    # t0 needs stack(b, c) before the longer stack exists (its rows may be computed later)
    temps, outs = _check(["t0 = stack(b, c).T @ x", "t1 = stack(a, b, c) * t0[0]"],
                         ["t1", "stack(b, c)"])
    assert temps == ["t0 = stack(b, c)", "t1 = t0.T @ x", "t2 = stack(a, b, c) * t1[0]"]
    assert outs == ["t2", "t0"]


def test_a_stack_nothing_builds_is_not_built_for_a_slice():
    # t0 is read by no output: it is dropped, not kept to slice stack(b, c) from
    temps, outs = _check(["t0 = stack(a, b, c, d)"], ["stack(b, c).T @ x"])
    assert temps == []
    assert outs == ["stack(b, c).T @ x"]


def test_stacks_in_one_statement_share_the_longer_one():
    # the outputs are one statement: the longer stack is named before it, wherever it is
    temps, outs = _check([], ["stack(b, c).T @ x", "stack(a, b, c, d).T @ y",
                              "sum(stack(a, b, c, d), axis=0)"])
    assert temps == ["t0 = stack(a, b, c, d)"]
    assert outs == ["t0[1:3].T @ x", "t0.T @ y", "sum(t0, axis=0)"]
    temps, outs = _check(["t0 = stack(a, b, c).T @ z + stack(b, c).T @ x"], ["t0"])
    assert temps == ["t0 = stack(a, b, c)", "t1 = t0.T @ z + t0[1:].T @ x"]


def test_a_stack_is_not_sliced_from_a_stack_it_is_part_of():
    # stack(b, c) is a run of the longer stack's rows and inside its last row: no slice
    temps, outs = _check([], ["stack(b, c, sum(stack(b, c), axis=0)).T @ z"])
    assert outs == ["stack(b, c, sum(stack(b, c), axis=0)).T @ z"]


def test_a_line_that_repeats_an_earlier_one_reads_its_name():
    # (a stacked LSTM's dWx built a stack and db built the same stack again)
    temps, outs = _check(["t0 = stack(a, b, c, d)", "t1 = stack(a, b, c, d)"],
                         ["t0.T @ y", "sum(t1, axis=0)", "sum(stack(a, b, c, d), axis=0)"])
    assert temps == ["t0 = stack(a, b, c, d)"]
    assert outs == ["t0.T @ y", "sum(t0, axis=0)", "sum(t0, axis=0)"]


def test_an_output_that_a_later_output_slices_is_built_once():
    temps, outs = _check([], ["stack(a, b, c)", "stack(b, c).T @ x"])
    assert temps == ["t0 = stack(a, b, c)"]
    assert outs == ["t0", "t0[1:].T @ x"]
    assert isinstance(_finish([], ["stack(a, b, c)"])[1][0][1], ast.Call)  # alone: no name


def test_weight_gradients_stack_their_steps_in_order_and_read_input_rows_as_a_slice():
    """Sums over steps of outer products stack their pairs in step order (the b_t's rows of
    one array by row, other values as computed): each gate's dW, dU and db of an LSTM read one
    stack of its adjoints (dW the slice [1:]), and the input rows are `X[a:b]`, not a stack of
    X[t] picks in reverse."""
    inst = problems.lstm(4, 3, 5)
    expr, shapes = inst.einderiv()
    g = einderiv.grad(expr, inst.wrt, shapes)
    (returned,) = [line for line in g.source.splitlines() if line.strip().startswith("return")]
    assert "stack" not in returned, returned
    assert not re.search(r"stack\(\[X\[", g.source), g.source
    # dW, dU, db of one gate: one stack (dW by the steps from the second)
    names = re.findall(r"_xp\.dot\((t\d+)(?:\[1:\])?\.T, \S+\), [^,]*?\b\1\.T, X\[:5\]\)",
                       returned)
    assert len(names) == 3, returned  # the gates used at every step (f has no first step)
    for name in names:
        assert f"_kernels.array_sum({name}, _xp, axis=0)" in returned
    got = g(**inst.params, **inst.data)
    want = inst.hand(inst.params, inst.data)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
