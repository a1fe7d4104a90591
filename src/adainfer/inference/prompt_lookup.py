"""Drafts copied from the text so far (prompt lookup decoding, Saxena 2023; transformers'
`prompt_lookup_num_tokens`): free drafts for outputs that repeat their prompt.

An answer extracted from a paragraph, code that renames a variable, a summary that quotes: the next
tokens often follow the last few tokens somewhere earlier in the prompt or the output. Proposing them
costs no layer at all; the full model verifies them in one pass, as it verifies any draft, so the
output is unchanged and a wrong guess costs one verification pass that still yields one token.
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_NGRAM = 3  # longest suffix matched; shorter ones are tried when it does not occur earlier


def lookup_drafts(history: Sequence[int], size: int, max_ngram: int = MAX_NGRAM) -> list[int]:
    """Up to `size` tokens that followed the latest earlier occurrence of `history`'s last n tokens.

    n runs from `max_ngram` down to 2 (a single repeated token proposes too often to pay); []
    when no suffix recurs or `size` < 1.
    """
    if size < 1:
        return []
    tokens = list(history)
    for n in range(min(max_ngram, len(tokens) - 1), 1, -1):
        suffix = tokens[-n:]
        for start in range(len(tokens) - n - 1, -1, -1):  # latest first; the suffix itself excluded
            if tokens[start:start + n] == suffix:
                return tokens[start + n:start + n + size]
    return []
