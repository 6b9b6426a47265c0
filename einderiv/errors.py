"""The errors einderiv raises. Every failure on bad input is one of these.

A `Span` locates a piece of source text; errors that carry one print the offending line with a
caret under it, so a user sees *where* as well as *what*.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Span:
    """A stretch of source text: 1-based line and column, and its length in characters."""

    source: str = field(repr=False)
    start: int  # 0-based offset
    end: int

    @property
    def line(self) -> int:
        return self.source.count("\n", 0, self.start) + 1

    @property
    def column(self) -> int:
        return self.start - (self.source.rfind("\n", 0, self.start) + 1) + 1

    def caret(self) -> str:
        """The source line holding the span, and a caret line under the span."""
        line_start = self.source.rfind("\n", 0, self.start) + 1
        line_end = self.source.find("\n", self.start)
        if line_end < 0:
            line_end = len(self.source)
        text = self.source[line_start:line_end]
        col = self.start - line_start
        # Very long lines are cut around the error so the message stays readable.
        if len(text) > 100:
            lo = max(0, col - 50)
            prefix = "..." if lo else ""
            text = prefix + text[lo:lo + 100] + ("..." if lo + 100 < len(text) else "")
            col = col - lo + len(prefix)
        text = "".join(ch if ch.isprintable() else " " if ch == "\t" else "?" for ch in text)
        width = max(1, min(self.end - self.start, len(text) - col))
        return f"  {text}\n  {' ' * col}{'^' * width}"


class EinderivError(Exception):
    """Base class of every error einderiv raises on bad input."""

    def __init__(self, message: str, span: Span | None = None, hint: str | None = None):
        self.message = message
        self.span = span
        self.hint = hint
        super().__init__(self._render())

    @property
    def line(self) -> int | None:
        return self.span.line if self.span else None

    @property
    def column(self) -> int | None:
        return self.span.column if self.span else None

    def _render(self) -> str:
        text = _cut(self.message)
        if self.span is not None:
            text = f"line {self.span.line}, column {self.span.column}: {text}\n{self.span.caret()}"
        if self.hint:
            text += f"\n  hint: {_cut(self.hint)}"
        return text


def _cut(text: str, limit: int = 400) -> str:
    """A message quotes user text (a name, an operand); a huge one is shortened in the middle."""
    return text if len(text) <= limit else f"{text[:limit - 40]} ... {text[-30:]}"


class ParseError(EinderivError):
    """The source text is not in the expression language (docs/language.md)."""


class ShapeError(EinderivError):
    """Shapes do not fit: a broadcast or matmul mismatch, a wrong rank, a bad array at call time."""


class UnknownNameError(EinderivError):
    """An unknown variable or function name."""


class InputError(EinderivError):
    """A call got a missing or unexpected input, or an input that is not an array."""


class EvaluationError(EinderivError):
    """The arrays were valid but the computation failed (e.g. inverting a singular matrix)."""


class RuleError(EinderivError):
    """A rule table is malformed or a rule is inconsistent."""


def did_you_mean(name: str, known) -> str | None:
    """A 'did you mean ...?' hint for a misspelt name, or None."""
    close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
    if not close:
        return None
    return "did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
