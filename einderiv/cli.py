"""The `einderiv` command line (README.md, "Two commands"; the language: docs/language.md)."""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

from .errors import EinderivError

EPILOG = """\
examples:
  einderiv einstein "W @ x + b" --shape W=m,n --shape x=n --shape b=m
  einderiv grad "sum(log(1 + exp(-y * (X @ w))))" --wrt w --shape X=n,d --shape y=n --shape w=d
  einderiv hessian "x @ A @ x" --wrt x --shape A=n,n --shape x=n --check
  einderiv jacobian "exp(x)" --wrt x --shape x=n
  einderiv rules list
  einderiv rules check my.rules

Shapes come from --shape NAME=DIMS (comma separated ints, dimension names and dimension
expressions such as y=n-1 or Z=2*n,m; NAME= for a scalar) or from inline declarations such as
'X: [n, d]'. Names are ASCII letters, digits and
'_'. An argument that starts with '-' is an option when it is one of the command's options
(or an abbreviation of one) or is written as one (--name, --name=value); any other is the
expression, wherever it stands: einderiv grad "-sum(log(x))" --wrt x --shape x=n. '-h' is help:
write the expression '-h' as "(-h)" or after '--', which still ends the options. Exit status: 0
on success, 1 when --check measures an error above --tol or a rule fails `rules check`, 2 on
bad input.

A rule file (--rules, rules check) whose implementations import Python modules
(`module:attribute`) is trusted code, run like a script: it loads only with --allow-imports.
"""

EINSTEIN_EPILOG = """\
examples:
  einderiv einstein "W @ x + b" --shape W=m,n --shape x=n --shape b=m
      out[i] = W[i,j]*x[j] + b[i]
  einderiv einstein "h = tanh(W @ x); sum(h * h)" --shape W=m,n --shape x=n
  echo "x: [n]; softmax(x)" | einderiv einstein -
"""


class ShapeArgument(argparse.Action):
    """Collects `--shape NAME=DIMS` into a dict; names are checked as everywhere else.

    A bad value is bad input as the expression's errors are: `einderiv: error:`, the argument
    with a caret under the offending part, a hint, exit 2 (argparse's own `error` would print
    its usage and no caret)."""

    def __call__(self, parser, namespace, value, option_string=None):
        from .errors import EinderivError
        from .lower.dimensions import declared
        from .parse.parser import check_name
        shapes = getattr(namespace, self.dest) or {}
        name, sep, dims = value.partition("=")
        if not sep or not name.strip():
            self._fail(parser, value, 0, len(value),
                       "--shape expects NAME=DIMS", "e.g. --shape X=n,d, or --shape c= for "
                       "a scalar")
        at = len(name) - len(name.lstrip())
        name = name.strip()
        try:
            check_name(name, "the variable")
        except EinderivError as e:
            self._fail(parser, value, at, at + len(name), e.message, e.hint)
        parsed, offset = [], len(value) - len(dims)  # where DIMS starts in the value
        parts = dims.split(",") if dims.strip() else []
        if len(parts) > 1 and not parts[-1].strip():
            parts.pop()  # `x=n,d,`: a trailing comma, as an inline declaration allows
        for part in parts:
            d = part.strip()
            start = offset + len(part) - len(part.lstrip())
            offset += len(part) + 1
            if d.isascii() and d.isdigit():
                parsed.append(int(d))
                continue
            if not d:
                self._fail(parser, value, start, start + 1,
                           f"the shape of '{name}' has an empty dimension",
                           "DIMS is comma separated, e.g. --shape X=n,d")
            try:
                dim = declared(d, name)  # a name, or a dimension expression: y=n-1, Z=2*n,m
            except EinderivError as e:
                lo, hi = start, start + max(len(d), 1)
                if e.span is not None and e.span.source == d:  # the place inside the part
                    lo, hi = start + e.span.start, start + max(e.span.end, e.span.start + 1)
                self._fail(parser, value, lo, hi, e.message, e.hint)
            parsed.append(dim.offset if dim.is_concrete else str(dim))
        if shapes.get(name, tuple(parsed)) != tuple(parsed):  # else the last would silently win
            show = lambda shape: f"[{', '.join(map(str, shape))}]"
            self._fail(parser, value, len(value) - len(dims), len(value),
                       f"--shape gives '{name}' two shapes: {show(shapes[name])} and "
                       f"{show(parsed)}", "give each variable one shape")
        shapes[name] = tuple(parsed)
        setattr(namespace, self.dest, shapes)

    @staticmethod
    def _fail(parser, value: str, lo: int, hi: int, message: str, hint: str | None):
        """Exit 2 with `message` about `--shape VALUE`, a caret under value[lo:hi]."""
        from .errors import Span
        prefix = "--shape "
        source = prefix + value
        caret = Span(source, len(prefix) + lo, len(prefix) + max(hi, lo + 1)).caret()
        shown = caret.splitlines()[0].strip()  # the argument as the caret line shows it
        text = f"einderiv: error: {shown}: {message}\n{caret}\n"
        if hint:
            text += f"  hint: {hint}\n"
        parser.exit(2, text)


def _add_expression_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("expr", metavar="EXPR",
                   help="the expression ('-' reads standard input; one that starts with '-', "
                        "such as '-sum(log(x))', may stand anywhere); the language is described "
                        "in docs/language.md")
    p.add_argument("--shape", metavar="NAME=DIMS", action=ShapeArgument, default={},
                   help="shape of a variable, e.g. X=n,d, y=n-1 or c= for a scalar (repeatable)")
    p.add_argument("--rules", metavar="FILE", action="append", default=[],
                   help="also load this rule file for this run (repeatable); see rules/*.rules")
    p.add_argument("--allow-imports", action="store_true",
                   help="let the --rules files import the Python modules their implementations "
                        "name (module:attribute): such a file is trusted code")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="einderiv",
        description="Einstein-notation tensor derivative compiler.\n"
                    "The expression language is described in docs/language.md.",
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
    # The commands that take an EXPR, for `_expression_as_positional`.
    parser.expression_commands = {"einstein": einstein}
    for name in ("grad", "jacobian", "hessian"):
        parser.expression_commands[name] = _add_derivative_parser(sub, name)
    _add_rules_parser(sub)
    return parser


# `--name` or `--name=value`: an option as written, known or not (argparse resolves an
# abbreviation, or reports an unknown option).
_LONG_OPTION = re.compile(r"--[A-Za-z][A-Za-z0-9_-]*(=.*)?", re.DOTALL)


def _expression_as_positional(parser, argv: list[str]) -> list[str]:
    """`argv` with an expression that starts with '-' moved after '--', where argparse takes it
    for the positional EXPR rather than an unknown option ("required: EXPR").

    Of a command that takes an EXPR, an argument that starts with '-' is an option when it is
    one of the command's option strings, or a unique abbreviation of one, or is written as a
    long option (`--name`, `--name=value`); the value of an option that takes one is its value
    whatever it looks like. Any other argument that starts with '-' (`-sum(log(x))`, `-x`,
    `-2 * x`), except '-' (standard input), is the expression. Arguments after '--' are left
    as they are.
    """
    command = next((i for i, a in enumerate(argv) if a == "--" or not a.startswith("-")), None)
    if command is None or argv[command] not in getattr(parser, "expression_commands", {}):
        return argv
    options = {s: action for action in parser.expression_commands[argv[command]]._actions
               for s in action.option_strings}
    kept, expressions = argv[:command + 1], []
    i = command + 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            break
        name = arg.partition("=")[0]
        if arg in options or name in options or _LONG_OPTION.fullmatch(arg):
            kept.append(arg)
            matches = [s for s in options if s.startswith(name) and s.startswith("--")]
            action = options.get(name) or (options[matches[0]] if len(matches) == 1 else None)
            if action is not None and action.nargs != 0 and "=" not in arg and i + 1 < len(argv):
                i += 1
                kept.append(argv[i])  # the option's value, whatever it looks like
        elif arg.startswith("-") and arg != "-":
            expressions.append(arg)
        else:
            kept.append(arg)
        i += 1
    if not expressions:
        return argv
    rest = argv[i + 1:] if i < len(argv) else []  # what came after a '--' of the user's
    return kept + ["--"] + expressions + rest


DERIVATIVE_EPILOG = {
    "grad": """\
examples:
  einderiv grad "sum(log(1 + exp(-y * (X @ w))))" --wrt w --shape X=n,d --shape y=n --shape w=d
      -(X.T @ (sigmoid(-y * (X @ w)) * y))
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


def _add_derivative_parser(sub, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=DERIVATIVE_HELP[name], description=DERIVATIVE_HELP[name] + ".",
                       epilog=DERIVATIVE_EPILOG[name],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_expression_arguments(p)
    p.add_argument("--wrt", metavar="NAME", action="append", required=True,
                   help="differentiate with respect to this variable (repeatable)")
    p.add_argument("--format", choices=FORMATS + ("all", "json"), default="formula",
                   help="formula (default): vectorized, in the expression language; einstein: "
                        "indexed notation; einsum: the contraction plan; python: the generated "
                        "module; latex; all: every one of them; json: every one of them in one "
                        "JSON object for tools, keyed by format name, with 'kind', 'wrt', "
                        "'inputs' and 'outputs' (name: shape) and, with --check, 'check'")
    p.add_argument("--check", action="store_true",
                   help="also compare the derivative with central finite differences of the "
                        "expression's value as written, as the IR interpreter computes it (an "
                        "independent path: no rewrites, no vectorizing, no generated code, no "
                        "derivative rule; a Hessian with second differences of that value) at "
                        "random inputs inside the expression's domain (entries in [0.5, 1.5], "
                        "else in the first of a few other ranges where the value and the "
                        "derivative are finite: arcsin, sqrt(-x)), print the "
                        "largest relative error, and exit 1 when it is above --tol (or not "
                        "finite); named dimensions get random sizes from 2 to 4, and a check "
                        "too large to afford is refused")
    p.add_argument("--tol", metavar="TOL", type=_tolerance, default=None,
                   help=f"the largest relative error --check accepts (default {CHECK_TOLERANCE:g}:"
                        " float64 central differences, first or second, are good to about "
                        "1e-8 at the random inputs, a wrong derivative is off by far more)")
    p.set_defaults(run=_derivative, kind=name)
    return p


# Central differences with steps of 1e-6 (relative) in float64 err by about eps * |f| / h
# (rounding) plus h**2 times the third derivative (truncation): 1e-10 to 1e-8 at --check's
# well-conditioned inputs of size 1, relative to max(1, largest entry). 1e-4 leaves room for
# functions a thousand times larger than their derivatives; a wrong derivative errs by O(1).
# A Hessian's second differences of the value (`check.second_difference`: steps of 1e-3 and
# 2e-3, extrapolated) err by about eps * |f| / h**2 plus h**4 times the sixth derivative: 1e-11
# to 1e-7 there (1e-6 for `sum(X @ X)` of a 10 x 10 X, whose value is 1e4 times its Hessian).
CHECK_TOLERANCE = 1e-4


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


FORMATS = ("formula", "einstein", "einsum", "python", "latex")
ATTRIBUTES = {"formula": "formula", "einstein": "einstein", "einsum": "einsum",
              "python": "source", "latex": "latex"}


def render(result, fmt: str, check: dict | None = None) -> str:
    """`result` in one output format, every format under a heading each ("all"), or every
    format in one JSON object ("json", with `check`'s entries under "check" when given)."""
    if fmt == "json":
        return json.dumps(_document(result, check), indent=2)
    if fmt != "all":
        return getattr(result, ATTRIBUTES[fmt]).rstrip("\n")
    return "\n\n".join(f"# {name}\n{render(result, name)}" for name in FORMATS)


def _document(result, check: dict | None) -> dict:
    """`--format json`: each format's text under its name, and what a tool needs to call the
    result: the derivative's kind, its wrt, its inputs in call order and its outputs, with
    shapes as lists of sizes and dimension names. The outputs are named as the printed program
    names them (`program.outputs`, as the formula and the generated code do): a label that is
    a user's name (`dx` of an input `dx`) is `dx_1` there, and here too."""
    from .ir.dims import Dim
    shape = lambda dims: [d.offset if d.is_concrete else str(d) for d in map(Dim.of, dims)]
    document = {name: render(result, name) for name in FORMATS}
    printed = [name for name, _ in result.program.outputs]  # in the order of `roots`
    roots = list(result.roots.values())
    assert len(printed) == len(roots), (printed, list(result.roots))
    # A derivative has a kind and a wrt; a compiled expression (`einderiv.compile`) neither.
    document.update(kind=getattr(result, "kind", "compile"),
                    wrt=list(getattr(result, "wrt", ())),
                    inputs={name: shape(dims) for name, dims in result.inputs.items()},
                    outputs={name: shape(root.shape) for name, root in zip(printed, roots)})
    if check is not None:
        document["check"] = check
    return document


def _derivative(args) -> int:
    from . import api
    if args.tol is not None and not args.check:
        raise EinderivError("--tol sets the tolerance of --check: add --check")
    source = _read_expression(args.expr)
    wrt = args.wrt if len(args.wrt) > 1 else args.wrt[0]
    derived = getattr(api, args.kind)(source, wrt, args.shape or None)
    as_json = args.format == "json"
    if not (as_json and args.check):  # else printed with the check's result, in one object
        print(render(derived, args.format))
    if not args.check:
        return 0
    error = _check(derived, source, args)
    tolerance = CHECK_TOLERANCE if args.tol is None else args.tol
    if as_json:  # NaN and inf are not JSON: null
        print(render(derived, "json", {"error": error if math.isfinite(error) else None,
                                       "tolerance": tolerance, "ok": error <= tolerance}))
    else:
        print(f"# check: largest relative error against central finite differences: {error:.2e}")
    if not error <= tolerance:  # nan too
        why = (f"is above the tolerance {tolerance:g} (--tol)" if error == error else
               "is not a number: the expression or its derivative is not finite at the "
               "random inputs of any range the check tries")
        print(f"einderiv: check failed: the largest relative error {error:.2e} {why}",
              file=sys.stderr)
        return 1
    return 0


def _check(derived, source: str, args) -> float:
    import numpy as np

    from .check import (all_finite, as_written, check_affordable, finite_difference,
                        inputs_in_domain, random_inputs_and_sizes, relative_error,
                        second_difference, second_difference_steps)
    from .ir.dims import Dim
    rng = np.random.default_rng(0)
    arrays, sizes = random_inputs_and_sizes(derived.lowered.declared, rng)
    names = list(derived.wrt)
    hessian = args.kind == "hessian"
    # Refused before anything is computed: derivatives too large to hold, or too many
    # evaluations (two per entry of a wrt variable; for a Hessian, eight per pair of entries).
    entries = sum(arrays[a].size for a in (dict.fromkeys(names) if hessian else names))
    check_affordable(sum(math.prod(Dim.of(d).size(sizes) for d in root.shape)
                         for root in derived.roots.values()),
                     second_difference_steps(entries) if hessian else entries,
                     second_order=hessian)
    # The reference is the program as written, without rewrites, as the IR interpreter
    # evaluates it, differenced numerically: once for a gradient or a Jacobian, twice for a
    # Hessian (never a derivative einderiv derived, which a wrong derivative rule would be in
    # too). An independent path, so that a fault of a rule, of a rewrite, of the vectorizer or
    # of the generated code, which computes the derivative, cannot hide in the reference too.
    forward = as_written(source, args.shape or None, derived.rules)
    # At a point inside the expression's domain (arcsin's, arctanh's, sqrt(-x)'s): the same
    # draw and sizes, moved into the first range where the value and the derivative are finite.
    computed = {}  # the derivative at the point taken, computed once (by its first call)

    def finite(at):
        if not all_finite(forward(**at)):
            return False
        computed["at"], computed["results"] = at, derived(**at)
        return all_finite(computed["results"])
    arrays = inputs_in_domain(arrays, finite)
    errors = []
    with np.errstate(all="ignore"):  # a nan or inf shows in the error, not as warnings
        results = (computed["results"] if computed.get("at") is arrays
                   else derived(**arrays))
        if hessian:
            expected = second_difference(forward, arrays, names)
            blocks = results if len(names) > 1 else ((results,),)
            errors += [relative_error(blocks[i][j], expected[i][j])
                       for i in range(len(names)) for j in range(len(names))]
        else:
            for i, a in enumerate(names):
                got = results[i] if len(names) > 1 else results
                errors.append(relative_error(got, finite_difference(forward, arrays, a)))
    # np.max, unlike max(), keeps a nan: a comparison that is nan anywhere has failed.
    return float(np.max(errors))


def _read_expression(text: str) -> str:
    if text != "-":
        return text
    from .errors import ParseError
    from .parse.parser import MAX_PROGRAM_CHARS
    # Standard input may hold a whole program (a long network's formula, many statements), so
    # it is read up to the program limit; the parser checks each statement's own limit. One
    # character more than the parser accepts tells that it is too long: `< /dev/zero` ends.
    source = sys.stdin.read(MAX_PROGRAM_CHARS + 1)
    if source.startswith("\ufeff"):  # a byte-order mark, as Windows editors save UTF-8 files
        source = source[1:]
    if len(source) > MAX_PROGRAM_CHARS:
        raise ParseError(f"standard input is too long: more than {MAX_PROGRAM_CHARS} characters",
                         hint="build very large expressions in Python with einderiv.var")
    return source


def _einstein(args) -> int:
    from .api import compile
    compiled = compile(_read_expression(args.expr), args.shape)
    print(compiled.einstein)
    return 0


RULES_EPILOG = """\
examples:
  einderiv rules list                     # every function and rule, with its file:line
  einderiv rules list tanh softmax        # just these functions
  einderiv rules list my.rules            # the rules of a table of your own
  einderiv rules check                    # verify the built-in tables
  einderiv rules check my.rules           # verify a table of your own

The built-in tables are the files rules/*.rules; the comments at the top of each describe the
rule language, and CONTRIBUTING.md walks through adding a function. A rule file whose
implementations import Python modules (`module:attribute`) is trusted code: it loads only with
--allow-imports.
"""

RULES_LIST_EPILOG = """\
examples:
  einderiv rules list                     # every function and rule
  einderiv rules list tanh
      rules/elementwise.rules:50  elementwise tanh(x)      = xp.tanh
      rules/elementwise.rules:51    d tanh(x) / dx         = sech2(x)
      rules/rewrites.rules:201    rewrite 1 - tanh(u) ** 2 = sech2(u)
  einderiv rules list inv logdet
  einderiv rules list my.rules            # only the rules of my.rules, as rules check FILE
  einderiv rules list my.rules tanh       # only its rules for tanh
  einderiv rules list --rules my.rules    # the built-in tables with my.rules on top

An argument that ends in .rules or names an existing file is a rule file; any other is a
function name. Listing only prints: nothing of a rule file is resolved or imported, so any
file may be listed.
"""

RULES_CHECK_EPILOG = """\
examples:
  einderiv rules check                    # every rule of the built-in tables
      ok    rules/elementwise.rules:50  elementwise tanh(x) = xp.tanh  evaluates
      ok    rules/elementwise.rules:51  d tanh(x) / dx = sech2(x)      error 1.5e-10
      ...
  einderiv rules check --quiet            # only failures and the summary
  einderiv rules check my.rules           # only the rules of my.rules (on top of the built-in)
      FAIL  my.rules:2  d tanh(x) / dx = 1 + tanh(x) ** 2  error 2.0e+00 > 1e-06
      checked 1 derivative rule and 0 functions in 0.01 s (...): 1 wrong: my.rules:2

Each derivative rule is compared with central finite differences of its function, through the
whole pipeline, at random well-conditioned inputs (and, for a tensor primitive, on stacked
arrays and along chosen axes); each primitive's implementation must evaluate to finite values
of the declared shape, and each definition must expand and differentiate. The two sides of each
rewrite must agree to rounding (1e-12) at random points of several ranges, zero included, the
replacement finite wherever the pattern is, and its pattern, lowered, must become its
replacement. An implementation that raises anything (even SystemExit) fails its check. Exit
status: 0 when every check passes, 1 when a rule is wrong, 2 on bad input (a missing file, a
malformed rule, an import not allowed).

A rule file is trusted code when an implementation names `module:attribute`: checking it
imports that module, which runs the module's code (and a file beside the rule file can be that
module). Such a file is refused unless --allow-imports is given; give it only for files you
would run as a Python script. `xp.NAME`, `xp.linalg.NAME`, `kernel.NAME` and the derivative
rules are data: no text of a rule file is evaluated, and such an implementation must name a
function of the array library or of einderiv's kernels (a longer chain such as
`xp.f2py.sys.exit`, a module or a class is refused at its line).
"""


def _add_rules_parser(sub) -> None:
    rules = sub.add_parser(
        "rules", help="list the rule tables, or verify rules numerically",
        description="List the rule tables (functions, how each is evaluated, derivatives), or "
                    "verify them against finite differences.",
        epilog=RULES_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = rules.add_subparsers(dest="rules_command", metavar="ACTION")
    actions.required = True
    listing = actions.add_parser(
        "list", help="print every function and rule with its file:line",
        description="Print every function, derivative rule and rewrite with its file:line, in "
                    "file order; a derivative is indented under its function, and a rewrite is "
                    "listed with each function it calls. With rule FILEs, only their rules "
                    "(loaded on top of the built-in tables, as rules check FILE does).",
        epilog=RULES_LIST_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    listing.add_argument("names", metavar="FILE|NAME", nargs="*",
                         help="rule files (ending in .rules, or existing files) to list the "
                              "rules of, and functions to list only (default: every rule of "
                              "the built-in tables)")
    # Not `rules`: main() loads that into the process-wide rule book before any command.
    listing.add_argument("--rules", metavar="FILE", dest="tables", action="append", default=[],
                         help="also load this rule file on top of the built-in tables "
                              "(repeatable)")
    listing.set_defaults(run=_rules_list)
    check = actions.add_parser(
        "check", help="verify rules against finite differences",
        description="Verify the rules of the built-in tables, or of the FILEs (loaded on top of "
                    "the built-in tables, so that they may use built-in functions).",
        epilog=RULES_CHECK_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("files", metavar="FILE", nargs="*",
                       help="rule files to check (default: the built-in tables)")
    check.add_argument("-q", "--quiet", action="store_true",
                       help="print only the checks that fail, and the summary")
    check.add_argument("--allow-imports", action="store_true",
                       help="let the FILEs import the Python modules their implementations name "
                            "(module:attribute); such a file is trusted code, see below")
    check.set_defaults(run=_rules_check)


def _shown(origin: str) -> str:
    """`file:line` with the file relative to the working directory when it lies under it."""
    file, sep, line = origin.rpartition(":")
    path = Path(file)
    if path.is_absolute():
        try:
            file = str(path.relative_to(Path.cwd().resolve()))
        except ValueError:
            pass
    return f"{file}{sep}{line}"


def _rules_with(paths, allow_imports: bool):
    from .rulebook import default_rulebook
    book = default_rulebook().copy()  # the process-wide rule book stays as it was
    for path in paths:
        book.load(path, allow_imports=allow_imports)
    return book.freeze()


def _is_rule_file(arg: str) -> bool:
    """Whether an argument of `rules list` is a rule file rather than a function's name."""
    return arg.endswith(".rules") or Path(arg).is_file()


def _rules_list(args) -> int:
    from .errors import UnknownNameError, did_you_mean
    from .rulebook.table import Derivative, Rewrite
    files = [Path(a) for a in args.names if _is_rule_file(a)]
    names = [a for a in args.names if not _is_rule_file(a)]
    # Listing only prints the rules: nothing is resolved or imported, so any file may be listed.
    book = _rules_with([*args.tables, *files], allow_imports=True)
    wanted = {str(p) for p in files}
    for name in names:
        if book.get(name) is None:
            raise UnknownNameError(f"no rule table defines a function '{name}'",
                                   hint=did_you_mean(name, book.functions))
    rows = []
    for rule in book.in_file_order():
        if wanted and rule.origin.rpartition(":")[0] not in wanted:
            continue  # only the FILEs' rules, as `rules check FILE` checks only theirs
        if isinstance(rule, Rewrite):  # listed with each function it calls
            if not names or set(names) & set(rule.functions):
                rows.append((_shown(rule.origin), f"rewrite {rule.pattern}", rule.replacement))
            continue
        name = rule.function if isinstance(rule, Derivative) else rule.name
        if names and name not in names:
            continue
        lhs, _, rhs = str(rule).partition(" = ")
        rows.append((_shown(rule.origin), ("  " if isinstance(rule, Derivative) else "") + lhs,
                     rhs))
    if not rows and files and not names:
        print(f"nothing to list: {', '.join(map(str, files))} holds no rules")
        return 0
    where = max((len(r[0]) for r in rows), default=0)
    what = min(max((len(r[1]) for r in rows), default=0), 40)
    for origin, lhs, rhs in rows:
        print(f"{origin:<{where}}  {lhs:<{what}} = {rhs}")
    return 0


def _rules_check(args) -> int:
    import time

    from .rulebook import Function, default_rulebook
    from .rulebook.table import Derivative, Rewrite
    from .rulebook.verify import REWRITE_TOLERANCE, TOLERANCE, check_tables
    paths = [Path(p) for p in args.files]
    book = _rules_with(paths, args.allow_imports) if paths else default_rulebook()
    started = time.perf_counter()
    checks = check_tables(book, paths or None)
    seconds = time.perf_counter() - started
    rows = [(c, _shown(c.origin), str(c.rule)) for c in checks]
    where = max((len(r[1]) for r in rows), default=0)
    what = min(max((len(r[2]) for r in rows), default=0), 56)
    for check, origin, text in rows:
        if check.ok and args.quiet:
            continue
        if not check.measured:
            result = "evaluates"
        elif check.error == float("inf"):
            result = ""  # nothing was measured; the message says why
        else:
            result = f"error {check.error:.1e}" + ("" if check.ok
                                                   else f" > {check.tolerance:.0e}")
        status = "ok" if check.ok else "FAIL"
        print(f"{status:<4}  {origin:<{where}}  {text:<{what}}  {result}".rstrip())
        if check.message:
            print(f"{'':<4}  {'':<{where}}  {check.message}")
    if not checks:
        print(f"nothing to check: {', '.join(map(str, paths))} holds no rules")
        return 0
    derivatives = sum(1 for c in checks if isinstance(c.rule, Derivative))
    functions = len({c.rule.name for c in checks if isinstance(c.rule, Function)})
    rewrites = sum(1 for c in checks if isinstance(c.rule, Rewrite))
    counted = [_count(derivatives, 'derivative rule'), _count(functions, 'function')]
    if rewrites:
        counted.append(_count(rewrites, "rewrite"))
    summary = (f"checked {', '.join(counted[:-1])} and {counted[-1]} in "
               f"{seconds:.2f} s (errors relative to central finite differences, tolerance "
               f"{TOLERANCE:.0e}"
               + (f"; between the sides of a rewrite, {REWRITE_TOLERANCE:.0e}" if rewrites
                  else "") + "): ")
    failed = list(dict.fromkeys(_shown(c.origin) for c in checks if not c.ok))
    if failed:
        print(summary + f"{len(failed)} wrong: " + ", ".join(failed))
        return 1
    print(summary + "all ok")
    return 0


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_expression_as_positional(
        parser, sys.argv[1:] if argv is None else list(argv)))
    try:
        if not getattr(args, "rules", None):
            return args.run(args)
        # The --rules files hold for this run only, and only in this thread: the process-wide
        # rule book (of a program that calls main) is the same afterwards.
        from .rulebook.table import using_rules
        with using_rules(_rules_with(args.rules, args.allow_imports)):
            return args.run(args)
    except EinderivError as e:
        print(f"einderiv: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("einderiv: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`einderiv rules list | head`): stop quietly, and keep Python from
        # complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
