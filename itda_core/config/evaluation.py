"""Options of an evaluation (:class:`StoreEvalConfig`, the run's options of ``itda eval`` with or without
``--store``) and the evaluation's defaults, apart from the evaluation code so that reading them (the CLI's
help) loads no torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from itda_core.errors import ITDAError
from itda_core.options import DEVICE_HELP, option

DEFAULT_MAX_TOKENS = 10_000
DEFAULT_BATCH_SIZE = 4  # documents per forward pass; small because logits are [batch, seq, vocab]
DEFAULT_KS = (10, 20, 40, 80)  # the k values (L0) of a sweep

# Which positions the CE loss score splices, zero-ablates and counts (docs/evaluation.md, "The splice and
# the CE rule").
CeRule = Literal["saebench", "splice-special", "skip-special"]
CE_RULES: tuple[str, ...] = get_args(CeRule)
DEFAULT_CE_RULE: CeRule = "saebench"
# The rule of a result written before the rule was recorded, from its ``splice_special`` flag (the option the
# rule replaced): spliced special tokens -> 'splice-special', left them alone -> 'skip-special'.
LEGACY_CE_RULES: dict[bool, str] = {True: "splice-special", False: "skip-special"}
CE_RULE_HELP = (
    "Which positions the CE loss score splices, zero-ablates and counts. 'saebench' (SAEBench's core eval with "
    "special tokens excluded from reconstruction): the reconstruction replaces real non-special positions, "
    "special tokens (BOS, ...) keep their original activation; zero-ablation covers every position, special "
    "ones included; every prediction made from a non-special token counts, also of a special target. "
    "'splice-special': reconstruction and zero-ablation at every position, special ones included; "
    "predictions count when neither their input nor their target is special. 'skip-special': special tokens "
    "keep their original activation in both the spliced and the zero-ablated run; counted as "
    "'splice-special'. Padding is never spliced nor counted.")


def check_ce_rule(rule: str) -> str:
    """``rule`` if it is one of :data:`CE_RULES`, else a clear error."""
    if rule not in CE_RULES:
        raise ITDAError(f"unknown CE rule {rule!r}; choose one of {', '.join(CE_RULES)}")
    return rule


@dataclass
class StoreEvalConfig:
    """How to evaluate dictionaries: each field with help is also an ``itda eval`` option (for one saved
    dictionary as for a store's)."""

    ks: list[int] | None = option(None, help="L0 values to evaluate at; None = each dictionary's own k.", cli=False)
    max_tokens: int | None = option(
        DEFAULT_MAX_TOKENS, help="Tokens to evaluate (non-special, in document order; 0 = the whole held-out split).")
    batch_size: int = option(DEFAULT_BATCH_SIZE, help="Documents per forward pass. Keep it small for big "
                             "vocabularies (logits are batch x seq_len x vocab).")
    ce_rule: CeRule = option(DEFAULT_CE_RULE, help=CE_RULE_HELP)
    exclude_first: bool = option(
        False, help="Leave each document's first position out of every metric. Useful for models without a BOS "
        "token, whose first token is an attention sink with a huge norm that dominates FVU and MSE.")
    device: str = option("auto", help=DEVICE_HELP)
    progress: bool = option(True, help="Show a progress bar on stderr.")
    timeout: float = option(600.0, help="Longest wait for the store's lock (seconds).", cli=False)

    def __post_init__(self) -> None:
        """Read the CLI's "0 = no limit" for ``max_tokens``; check the CE rule."""
        if self.max_tokens == 0:
            self.max_tokens = None
        check_ce_rule(self.ce_rule)
