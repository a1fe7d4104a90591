"""`adainfer verify DIR`: recompute a classifier's certificate from its stored calibration sample.

No model is loaded. From `calibration.npz` (`fit.calibration_arrays`) and the policy:
1. the scorer's margins on the stored calibration features equal the stored scores (the arrays
   belong to this scorer);
2. Learn then Test is run again on those scores and reference answers, over the policy's frozen
   threshold grid, at the card's epsilon and delta (`policies.calibrated.learn_then_test`);
3. the recomputed threshold equals the policy's, and the recomputed p-value, risk and sample
   size equal the card's certificate; the card also passes the load checks that need no model
   (field types, epsilon/delta/threshold agreement, prompt hash).
The certificate holds when all of these agree and the p-value is at most delta (or no threshold
passed, so the policy never exits early). A classifier fitted before the arrays were stored
cannot be verified: that is an error, not a verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from adainfer.fit.calibration_arrays import CALIBRATION_NPZ, read_calibration
from adainfer.fit.card import CardError, read_card
from adainfer.fit.card_checks import check_certificate, check_field_types, check_prompt_hash
from adainfer.policies.calibrated import CalibratedScorer, RiskCertificate, learn_then_test
from adainfer.policies.io import load_policy


@dataclass
class Verification:
    """What `verify_classifier` found: `holds`, the recomputed certificate, and each disagreement."""

    holds: bool
    recomputed: RiskCertificate
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        cert = self.recomputed
        threshold = "none (never exits early)" if math.isinf(cert.threshold) else f"{cert.threshold:.6g}"
        head = (f"recomputed from {cert.calibration_prompts} calibration prompts: threshold {threshold}, "
                f"p-value {cert.p_value:.4g} (delta {cert.delta}), calibration risk {cert.empirical_risk:.4g} "
                f"(epsilon {cert.epsilon})")
        verdict = "certificate holds" if self.holds else "certificate does NOT hold"
        return [head, *self.problems, verdict]


def verify_classifier(directory: Path) -> Verification:
    """Recompute the certificate of the classifier in `directory` (see the module docstring).
    Raises CardError (or PolicyFileError) when it cannot be verified at all."""
    directory = Path(directory)
    policy = load_policy(directory)  # hashes of every part, calibration.npz included
    card = read_card(directory)
    arrays = read_calibration(directory)
    if arrays is None:
        raise CardError(f"cannot verify {directory}: it has no {CALIBRATION_NPZ} (fitted before classifiers stored "
                        f"their calibration sample); refit it with `adainfer fit` to make it verifiable")
    if not isinstance(policy, CalibratedScorer) or not hasattr(policy, "threshold_grid_"):
        raise CardError(f"cannot verify {directory}: its policy has no certified threshold grid")
    check_field_types(card)
    problems: list[str] = []
    for check in (lambda: check_certificate(card, policy), lambda: check_prompt_hash(card, arrays.prompt_sha256)):
        try:
            check()
        except CardError as error:
            problems.append(str(error))
    if arrays.features.shape[2] != len(policy.features):
        raise CardError(f"{directory / CALIBRATION_NPZ}: {arrays.features.shape[2]} features, the policy reads "
                        f"{len(policy.features)}")
    if not np.allclose(policy.margins(arrays.features), arrays.scores, rtol=1e-6, atol=1e-9):
        problems.append("the stored scores are not this scorer's margins on the stored calibration features")
    recomputed = learn_then_test(arrays.scores, arrays.reference, card.epsilon, card.delta, policy.threshold_grid_,
                                 policy.first_check)
    problems += _disagreements(recomputed, policy.threshold_, card.certificate)
    passed = math.isinf(recomputed.threshold) or recomputed.p_value <= card.delta
    return Verification(holds=passed and not problems, recomputed=recomputed, problems=problems)


def _disagreements(recomputed: RiskCertificate, threshold: float, recorded: dict) -> list[str]:
    """Where the recomputed certificate differs from the policy's threshold and the card's record."""
    problems = []
    if not (recomputed.threshold == threshold or (math.isinf(recomputed.threshold) and math.isinf(threshold))):
        problems.append(f"the recomputed threshold {recomputed.threshold} is not the policy's {threshold}")
    for name in ("calibration_prompts", "p_value", "empirical_risk", "thresholds_tested"):
        value, stated = getattr(recomputed, name), recorded.get(name)
        if not isinstance(stated, (int, float)) or not math.isclose(value, stated, rel_tol=1e-9, abs_tol=1e-12):
            problems.append(f"the card's certificate states {name} {stated!r}, recomputed {value!r}")
    return problems
