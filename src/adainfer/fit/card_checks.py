"""A card cannot contradict its classifier: checks run on every load (serve, predict, `load`).

The policy directory's hashes catch a torn save, not an edit: with the hashes recomputed, a card
whose answer set is swapped (every label inverted), whose epsilon differs from its certificate's,
whose demonstrations are not those it was calibrated with, or whose epsilon is a string would
load. So the card is checked against what it describes, each check one `CardError` line:

- every field has its type (a number is a number, not a string or a bool);
- each label's first token under the model's tokenizer is its recorded token id;
- epsilon, delta, the threshold and the first check equal the certificate's and the policy's;
- the hash of the prompt format and demonstrations recorded at fit time (`prompt_sha256`, on
  the card and in the calibration arrays) matches the card's own.

Classifiers fitted before `prompt_sha256` and the calibration arrays were stored have neither;
the other checks still apply to them.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import fields
from pathlib import Path

from adainfer.engine.model import EarlyExitModel
from adainfer.fit.answer_set import answer_set
from adainfer.fit.card import CardError, ClassifierCard
from adainfer.policies.base import StopPolicy

# The JSON type of each card field ("number": int or float, never bool).
FIELD_TYPES: dict[str, str] = {
    "task": "str", "model": "str", "model_identity": "dict", "shots": "int", "demonstrations": "list",
    "answer_set": "list|None", "answer_token_ids": "list|None", "features": "list", "first_check": "int",
    "epsilon": "number", "delta": "number", "certificate": "dict", "seed": "int", "split_sizes": "dict",
    "test": "dict", "speed": "list", "resplit_check": "dict", "cost_profile": "dict", "command": "str",
    "prompt_format": "str", "prompt_sha256": "str", "scorer": "dict", "calibration_needed": "dict"}
_CHECKS = {"str": lambda v: isinstance(v, str), "dict": lambda v: isinstance(v, dict),
           "list": lambda v: isinstance(v, list), "None": lambda v: v is None,
           "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
           "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def prompt_sha256(prompt_format: str, demonstrations: list[dict[str, str]]) -> str:
    """The hash of what a prompt is built from: its format and the fixed demonstrations, in order."""
    text = json.dumps({"prompt_format": prompt_format, "demonstrations": demonstrations}, sort_keys=True,
                      ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def check_field_types(card: ClassifierCard) -> None:
    """Every field present has its JSON type; the split sizes are counts."""
    for item in fields(card):
        expected = FIELD_TYPES.get(item.name)
        if expected is None:
            continue
        value = getattr(card, item.name)
        if not any(_CHECKS[kind](value) for kind in expected.split("|")):
            raise CardError(f"card field {item.name!r} must be {expected.replace('|', ' or ')}, got "
                            f"{type(value).__name__} {value!r:.40}")
    if not all(_CHECKS["int"](size) for size in card.split_sizes.values()):
        raise CardError("card field 'split_sizes' must map splits to integer counts")


def check_certificate(card: ClassifierCard, policy: StopPolicy) -> None:
    """epsilon, delta, threshold and first check: the card's, its certificate's and the policy's agree."""
    for name in ("epsilon", "delta"):
        recorded = card.certificate.get(name)
        if recorded != getattr(card, name):
            raise CardError(f"the card's {name} ({getattr(card, name)!r}) is not its certificate's ({recorded!r})")
        policy_certificate = getattr(policy, "certificate_", None)
        if policy_certificate is not None and getattr(policy_certificate, name) != recorded:
            raise CardError(f"the card's {name} ({recorded!r}) is not the policy's certificate's "
                            f"({getattr(policy_certificate, name)!r})")
    threshold = getattr(policy, "threshold_", None)
    if threshold is not None:
        policy_threshold = None if math.isinf(threshold) else threshold
        if card.certificate.get("threshold") != policy_threshold:
            raise CardError(f"the card's threshold ({card.certificate.get('threshold')!r}) is not the policy's "
                            f"({policy_threshold!r})")
    if card.first_check != getattr(policy, "first_check", card.first_check):
        raise CardError(f"the card's first check ({card.first_check}) is not the policy's ({policy.first_check})")


def check_labels(card: ClassifierCard, model: EarlyExitModel) -> None:
    """Each label's first token, as `fit` computed it, is the card's recorded id for that label."""
    if card.answer_set is None:
        return
    try:
        found = answer_set(model, card.answer_set).token_ids
    except ValueError as error:
        raise CardError(f"the card's answer set cannot be a classifier's: {error}") from None
    for label, recorded, actual in zip(card.answer_set, card.answer_token_ids, found):
        if recorded != actual:
            raise CardError(f"label {label!r} starts with token {actual} ({model.decode_token(actual)!r}) under "
                            f"this model's tokenizer, but the card records {recorded} "
                            f"({model.decode_token(recorded)!r}): its labels do not match its answer tokens")


def check_prompt_hash(card: ClassifierCard, recorded: str | None = None) -> None:
    """The card's prompt format and demonstrations hash to the `prompt_sha256` recorded at fit time
    (on the card, and `recorded`, the calibration arrays' copy, when there is one)."""
    actual = prompt_sha256(card.prompt_format, card.demonstrations)
    for where, expected in (("the card's prompt_sha256", card.prompt_sha256), ("the calibration arrays'", recorded)):
        if expected and expected != actual:
            raise CardError(f"the card's prompt format and demonstrations are not those it was calibrated with "
                            f"(hash {actual[:12]}..., {where} {expected[:12]}...)")


def check_card(card: ClassifierCard, policy: StopPolicy, model: EarlyExitModel, *, directory: Path,
               recorded_prompt_sha256: str | None = None) -> None:
    """Every check above, each failure one line naming `directory`."""
    try:
        check_field_types(card)
        check_certificate(card, policy)
        check_labels(card, model)
        check_prompt_hash(card, recorded_prompt_sha256)
    except CardError as error:
        raise CardError(f"{directory}: {error}") from None
