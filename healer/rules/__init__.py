"""Rules: what a rule file says (`models`), loading and checking rule files (`loading`),
turning a rule and an alert into a plan (`planning`), and the `rules test|replay` tools
(`tools`, imported on its own: it needs the ingest path)."""

from healer.rules.loading import CompiledRule, RuleSet, load_rule_files, load_rules
from healer.rules.models import Rule, RulesFile, StepRule
from healer.rules.planning import RenderError, render

__all__ = [
    "CompiledRule",
    "RenderError",
    "Rule",
    "RuleSet",
    "RulesFile",
    "StepRule",
    "load_rule_files",
    "load_rules",
    "render",
]
