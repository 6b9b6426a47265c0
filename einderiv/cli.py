"""The `einderiv` command line (SPEC §3)."""
from __future__ import annotations

import argparse
import sys

from .errors import EinderivError

EPILOG = """\
examples:
  einderiv einstein "W @ x + b" --shape W=m,n --shape x=n --shape b=m
  einderiv grad "sum(log(1 + exp(-y * (X @ w))))" --wrt w --shape X=n,d --shape y=n --shape w=d
  einderiv hessian "x @ A @ x" --wrt x --shape A=n,n --shape x=n --check
  einderiv jacobian "exp(x)" --wrt x --shape x=n

Shapes come from --shape NAME=DIMS (comma separated ints and dimension names; NAME= for a
scalar) or from inline declarations such as 'X: [n, d]'. An expression that starts with '-'
goes after '--'. Exit status: 0 on success, 2 on bad input.
"""

EINSTEIN_EPILOG = """\
examples:
  einderiv einstein "W @ x + b" --shape W=m,n --shape x=n --shape b=m
      out[i] = W[i,j]*x[j] + b[i]
  einderiv einstein "h = tanh(W @ x); sum(h * h)" --shape W=m,n --shape x=n
  echo "x: [n]; softmax(x)" | einderiv einstein -
"""


class ShapeArgument(argparse.Action):
    """Collects `--shape NAME=DIMS` into a dict."""

    def __call__(self, parser, namespace, value, option_string=None):
        shapes = getattr(namespace, self.dest) or {}
        name, sep, dims = value.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            parser.error(f"--shape expects NAME=DIMS, e.g. --shape X=n,d (got {value!r})")
        parsed = []
        for d in (p.strip() for p in dims.split(",")) if dims.strip() else ():
            if d.isdigit():
                parsed.append(int(d))
            elif d.isidentifier():
                parsed.append(d)
            else:
                parser.error(f"--shape {name}: {d!r} is not an integer or a dimension name")
        shapes[name] = tuple(parsed)
        setattr(namespace, self.dest, shapes)


def _add_expression_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("expr", metavar="EXPR",
                   help="the expression, in the language of SPEC §1 ('-' reads standard input)")
    p.add_argument("--shape", metavar="NAME=DIMS", action=ShapeArgument, default={},
                   help="shape of a variable, e.g. X=n,d or c= for a scalar (repeatable)")
    p.add_argument("--rules", metavar="FILE", action="append", default=[],
                   help="also load this rule file (repeatable); see rules/*.rules")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="einderiv",
        description="Einstein-notation tensor derivative compiler.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__
    parser.add_argument("--version", action="version", version=f"einderiv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    einstein = sub.add_parser(
        "einstein", help="print an expression in indexed Einstein form",
        description="Print the expression in indexed Einstein form: one line per tensor, sums "
                    "over indices that repeat on the right and are absent on the left.",
        epilog=EINSTEIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_expression_arguments(einstein)
    einstein.set_defaults(run=_einstein)
    for name in ("grad", "jacobian", "hessian"):
        _add_derivative_parser(sub, name)
    return parser


DERIVATIVE_EPILOG = {
    "grad": """\
examples:
  einderiv grad "sum(log(1 + exp(-y * (X @ w))))" --wrt w --shape X=n,d --shape y=n --shape w=d
      t0 = exp(-(y * (X @ w)))
      -(X.T @ (t0 / (1 + t0) * y))
  einderiv grad "tr(A @ X @ B)" --wrt X --shape A=p,m --shape X=m,n --shape B=n,p --check
  einderiv grad "x @ A @ x" --wrt x --shape A=n,n --shape x=n --format all
  einderiv grad "W: [h, d]; b: [h]; x: [d]; sum(tanh(W @ x + b))" --wrt W --wrt b
""",
    "jacobian": """\
examples:
  einderiv jacobian "exp(x)" --wrt x --shape x=n --format einstein   # delta[i,j]*exp(x[j])
  einderiv jacobian "softmax(x)" --wrt x --shape x=n --check
""",
    "hessian": """\
examples:
  einderiv hessian "x @ A @ x" --wrt x --shape A=n,n --shape x=n
  einderiv hessian "sum(log(1 + exp(-y * (X @ w))))" --wrt w --shape X=n,d --shape y=n --shape w=d
""",
}

DERIVATIVE_HELP = {
    "grad": "print the gradient of a scalar expression",
    "jacobian": "print the Jacobian (shape: output + wrt) of an expression",
    "hessian": "print the Hessian of a scalar expression",
}


def _add_derivative_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help=DERIVATIVE_HELP[name], description=DERIVATIVE_HELP[name] + ".",
                       epilog=DERIVATIVE_EPILOG[name],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_expression_arguments(p)
    p.add_argument("--wrt", metavar="NAME", action="append", required=True,
                   help="differentiate with respect to this variable (repeatable)")
    p.add_argument("--format", choices=FORMATS + ("all",), default="formula",
                   help="formula (default): vectorized, in the expression language; einstein: "
                        "indexed notation; einsum: the contraction plan; python: the generated "
                        "module; latex; all: every one of them")
    p.add_argument("--check", action="store_true",
                   help="also compare with central finite differences at random inputs and "
                        "print the largest relative error")
    p.set_defaults(run=_derivative, kind=name)


FORMATS = ("formula", "einstein", "einsum", "python", "latex")
ATTRIBUTES = {"formula": "formula", "einstein": "einstein", "einsum": "einsum",
              "python": "source", "latex": "latex"}


def render(result, fmt: str) -> str:
    """`result` in one output format, or every format under a heading each."""
    if fmt != "all":
        return getattr(result, ATTRIBUTES[fmt]).rstrip("\n")
    return "\n\n".join(f"# {name}\n{render(result, name)}" for name in FORMATS)


def _derivative(args) -> int:
    from . import api
    source = _read_expression(args.expr)
    wrt = args.wrt if len(args.wrt) > 1 else args.wrt[0]
    derived = getattr(api, args.kind)(source, wrt, args.shape or None)
    print(render(derived, args.format))
    if args.check:
        error = _check(derived, source, args)
        print(f"# check: largest relative error against central finite differences: {error:.2e}")
    return 0


def _check(derived, source: str, args) -> float:
    import numpy as np

    from . import api
    from .check import finite_difference, random_inputs, relative_error
    rng = np.random.default_rng(0)
    arrays = random_inputs(derived.lowered.declared, rng)
    # The reference differentiates the forward program (or, for a Hessian, the gradient).
    names = list(derived.wrt)
    results = derived(**arrays)
    worst = 0.0
    for i, a in enumerate(names):
        if args.kind == "hessian":
            ref_f = api.grad(source, a, args.shape or None)
            blocks = results if len(names) > 1 else ((results,),)
            for j, b in enumerate(names):
                worst = max(worst, relative_error(blocks[i][j],
                                                  finite_difference(ref_f, arrays, b)))
        else:
            forward = api.compile(source, args.shape or None)
            got = results[i] if len(names) > 1 else results
            worst = max(worst, relative_error(got, finite_difference(forward, arrays, a)))
    return worst


def _read_expression(text: str) -> str:
    return sys.stdin.read() if text == "-" else text


def _einstein(args) -> int:
    from .api import compile
    compiled = compile(_read_expression(args.expr), args.shape)
    print(compiled.einstein)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "rules", None):
            from .rulebook import load_rules
            for path in args.rules:
                load_rules(path)
        return args.run(args)
    except EinderivError as e:
        print(f"einderiv: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("einderiv: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
