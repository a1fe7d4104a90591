"""The card of a fitted classifier: what it is, what it promises, what was measured, and how.

`card.json` holds everything `predict` needs to answer raw inputs (the fixed demonstrations and
the answer set) plus the certificate and the test figures; `card.md` says the same for people.
Both are parts of the policy directory, hashed in its `config.json` like the model file, so a
card edited by hand or copied from another fit is refused at load.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adainfer.data.tasks import Example
from adainfer.fit.splits import prompt_for

CARD_JSON = "card.json"
CARD_MD = "card.md"
PROMPT_FORMAT = "{demonstrations, each 'Q: {input}\\nA: {output}\\n\\n'}Q: {input}\\nA:"


class CardError(ValueError):
    """A card that is missing, malformed, or not the one its policy was saved with."""


@dataclass
class ClassifierCard:
    """A fitted classifier's description. `answer_set` is None for an open-vocabulary task."""

    task: str
    model: str
    model_identity: dict[str, Any]
    shots: int
    demonstrations: list[dict[str, str]]
    answer_set: list[str] | None
    answer_token_ids: list[int] | None
    features: list[str]
    first_check: int
    epsilon: float
    delta: float
    certificate: dict[str, Any]
    seed: int
    split_sizes: dict[str, int]
    test: dict[str, Any] = field(default_factory=dict)
    speed: list[dict[str, Any]] = field(default_factory=list)
    resplit_check: dict[str, Any] = field(default_factory=dict)
    cost_profile: dict[str, Any] = field(default_factory=dict)
    # Which scorer and first check cross-validation on the train split chose, and why (`fit.scorer_choice`).
    scorer: dict[str, Any] = field(default_factory=dict)
    # Calibration prompts a certificate needs at (epsilon, delta): any at all, and one keeping the CV savings.
    calibration_needed: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    prompt_format: str = PROMPT_FORMAT
    prompt_sha256: str = ""  # of prompt_format + demonstrations at fit time ("" on cards fitted before it)

    def prompt(self, text: str) -> str:
        """The prompt this classifier was calibrated on, for one raw input."""
        return prompt_for(text, [Example(demo["input"], demo["output"]) for demo in self.demonstrations])

    def answer_label(self, token_id: int, token_text: str) -> str:
        """The label of an answer token: its label in a closed set, else the token's text, stripped."""
        if self.answer_token_ids is not None and token_id in self.answer_token_ids:
            return self.answer_set[self.answer_token_ids.index(token_id)]
        return token_text.strip()

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any, source: str = CARD_JSON) -> "ClassifierCard":
        """A card from parsed JSON, with every field `predict` relies on checked."""
        try:
            card = cls(**data)
            _check(card)
        except (TypeError, ValueError) as error:
            raise CardError(f"{source}: not a valid classifier card ({error})") from None
        return card

    def to_markdown(self) -> str:
        return render_markdown(self)


def _check(card: ClassifierCard) -> None:
    if not isinstance(card.shots, int) or card.shots != len(card.demonstrations):
        raise ValueError("shots must equal the number of demonstrations")
    for demo in card.demonstrations:
        if not isinstance(demo, dict) or set(demo) != {"input", "output"} or not all(
                isinstance(value, str) and value for value in demo.values()):
            raise ValueError("each demonstration must be {input, output} non-empty strings")
    if (card.answer_set is None) != (card.answer_token_ids is None):
        raise ValueError("answer_set and answer_token_ids come together")
    if card.answer_set is not None:
        if (not isinstance(card.answer_set, list) or not all(isinstance(label, str) for label in card.answer_set)
                or not isinstance(card.answer_token_ids, list)
                or not all(isinstance(i, int) and not isinstance(i, bool) for i in card.answer_token_ids)
                or len(card.answer_set) != len(card.answer_token_ids) or len(set(card.answer_token_ids)) < 2
                or len(set(card.answer_token_ids)) != len(card.answer_token_ids)):
            raise ValueError("answer_set must be labels with one distinct token id each")
    if not isinstance(card.model_identity, dict) or not isinstance(card.features, list):
        raise ValueError("model_identity must be an object and features a list")


def read_card(directory: Path) -> ClassifierCard:
    """The card of a policy directory (the caller has checked its hash with `load_policy`)."""
    path = Path(directory) / CARD_JSON
    if not path.is_file():
        raise CardError(f"{directory} has no {CARD_JSON}: it is a policy from `adainfer train`/`calibrate`, not a "
                        f"classifier from `adainfer fit`; give it prompts ({{\"prompt\": ...}}), not raw inputs")
    if path.stat().st_size > 2**22:
        raise CardError(f"{path} is {path.stat().st_size} bytes; a card is a few kilobytes")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as error:
        raise CardError(f"{path} is not valid JSON: {error}") from None
    return ClassifierCard.from_dict(data, str(path))


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _cached_dense_words(figure: dict[str, Any]) -> str:
    """The speed figure against the model's forward over the cached prefix (absent from older cards)."""
    if not figure.get("prefix_tokens"):
        return ""
    return (f"; vs the model's forward over the cached prefix: {figure['speedup_vs_cached_dense']:.2f}x "
            f"({figure['cached_dense_seconds']:.1f} s; {figure['prefix_tokens']} prefix tokens cached once, "
            f"{figure['prefix_bytes'] / 2**20:.1f} MiB)")


def summary_lines(card: ClassifierCard) -> list[str]:
    """The few lines a user reads after `fit`: dense vs early exit, agreement, savings, speed, certificate."""
    test, cert = card.test, card.certificate
    lines = []
    if test:
        lines.append(f"test ({test['prompts']} prompts): dense accuracy {test['dense_accuracy']:.3f}, early exit "
                     f"{test['accuracy']:.3f}, agreement with dense {test['agreement_with_dense']:.3f} "
                     f"(disagreement {_pct(1 - test['agreement_with_dense'])}, promised <= {_pct(card.epsilon)})")
        share = test.get("share_of_oracle")  # absent from cards written before it was reported
        lines.append(f"layers saved {_pct(test['layers_saved'])}"
                     + (f" ({_pct(share)} of the stable-answer oracle's {_pct(test['oracle_layers_saved'])})"
                        if share is not None else "")
                     + f", honest FLOPs ratio {test['honest_flops_ratio']:.3f}")
    lines += _choice_lines(card)
    for figure in card.speed:
        own = figure.get("speedup_vs_full_depth")  # absent from cards written before it was measured
        lines.append(f"measured speedup vs the model's forward at batch {figure['batch_size']}: "
                     f"{figure['speedup']:.2f}x ({figure['prompts']} prompts, {figure['dense_seconds']:.1f} s dense, "
                     f"{figure['early_exit_seconds']:.1f} s early exit, {figure['torch_threads']} threads)"
                     + ("" if own is None else f"; vs our own walk at full depth: {own:.2f}x "
                                               f"({figure['full_depth_seconds']:.1f} s)")
                     + _cached_dense_words(figure))
    threshold = cert.get("threshold")
    if threshold is None:
        lines.append(f"certificate: no threshold passed with {cert['calibration_prompts']} calibration prompts at "
                     f"epsilon {card.epsilon}, delta {card.delta}: the classifier never exits early")
    else:
        lines.append(f"certificate: at most {_pct(card.epsilon)} of answers differ from the full model's, with "
                     f"probability >= {1 - card.delta:.2f} (Learn then Test on {cert['calibration_prompts']} "
                     f"calibration prompts, p = {cert['p_value']:.3g}, threshold {threshold:.4g})")
    return lines


def _choice_lines(card: ClassifierCard) -> list[str]:
    """The scorer cross-validation chose, and a warning when calibration is too small to keep its savings."""
    lines = [f"scorer: {card.scorer['reason']}"] if card.scorer else []
    needed = card.calibration_needed.get("cv_savings_of_chosen_scorer")
    have = card.calibration_needed.get("calibration_prompts")
    if needed is not None and have is not None and needed > have:
        lines.append(f"calibration is small: {have} prompts certify less than the scorer could save; about {needed} "
                     f"would keep its cross-validated savings at epsilon {card.epsilon}")
    return lines


def _candidate_rows(card: ClassifierCard) -> list[str]:
    """card.md's table of the scorers and schedules cross-validation compared."""
    if not card.scorer.get("candidates"):
        return []
    rows = ["## Scorer choice (cross-validation on the train split)", "",
            "| scorer | first check | time saved | layers saved | disagreement | calibration needed |", "|---|---|---|---|---|---|"]
    rows += [f"| {c['scorer']} | {c['first_check']} | {_pct(c['time_saved'])} | {_pct(c['layers_saved'])} | "
             f"{_pct(c['disagreement'])} | {c['calibration_needed'] if c['calibration_needed'] is not None else '–'} |"
             for c in card.scorer["candidates"]]
    return rows + [""]


def render_markdown(card: ClassifierCard) -> str:
    """card.md: the command, then the classifier, its certificate and its measured figures."""
    answers = ", ".join(card.answer_set) if card.answer_set else "open vocabulary (full-vocabulary lens)"
    rows = [
        f"# Early-exit classifier: {card.task} on {card.model}", "",
        f"Command: `{card.command}`" if card.command else "", "",
        "| | |", "|---|---|",
        f"| model | {card.model} ({card.model_identity.get('architecture')}, {card.model_identity.get('num_layers')} "
        f"layers, head sha256 {card.model_identity.get('head_sha256')}) |",
        f"| prompt | `{card.prompt_format}` with {card.shots} fixed demonstrations (in card.json) |",
        f"| answer set | {answers} |",
        f"| features | {', '.join(card.features)}; first check at layer {card.first_check} |",
        f"| splits (seed {card.seed}) | {card.split_sizes['train']} train, {card.split_sizes['calibration']} "
        f"calibration, {card.split_sizes['test']} test prompts |",
        f"| epsilon, delta | {card.epsilon}, {card.delta} |",
        f"| threshold | {card.certificate.get('threshold')} (p-value {card.certificate.get('p_value')}, "
        f"calibration risk {card.certificate.get('empirical_risk')}) |", "",
        "## Summary", "", *[f"- {line}" for line in summary_lines(card)], "", *_candidate_rows(card),
    ]
    if card.resplit_check:
        check = card.resplit_check
        rows += ["## Re-split check", "",
                 f"{check['splits']} random calibration/test splits of the {check['prompts']} calibration and test "
                 f"prompts, the threshold recalibrated on each: test disagreement <= epsilon in "
                 f"{check['fraction_within_epsilon']:.2f} of them ({check['splits_certifying_exits']} certified some "
                 f"early exit; among those, {check['fraction_within_epsilon_certifying']}).", ""]
    return "\n".join(rows)
