"""Stage 5: indexed IR -> vectorized array expressions (matrix forms where they fit)."""
from .program import VectorProgram, vectorize

__all__ = ["VectorProgram", "vectorize"]
