"""Stage 3a: rewrite rules (rules/rewrites.rules) applied to the IR, before derivation and to
every derivative after it, so that programs are numerically stable by construction."""
from .rewrite import Rewriter

__all__ = ["Rewriter"]
