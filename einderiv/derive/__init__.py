"""Stage 3: symbolic derivatives of IR, from the rule tables."""
from .reverse import derivatives

__all__ = ["derivatives"]
