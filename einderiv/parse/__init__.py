"""Stage 1: source text -> syntax tree."""
from .parser import parse

__all__ = ["parse"]
