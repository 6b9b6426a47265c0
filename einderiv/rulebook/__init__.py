"""Rule tables: derivative and evaluation knowledge, read from `rules/*.rules` text files."""
from .table import Function, RuleBook, default_rulebook, load_rules, rules_dir

__all__ = ["Function", "RuleBook", "default_rulebook", "load_rules", "rules_dir"]
