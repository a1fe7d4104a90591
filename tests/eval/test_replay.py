"""Replaying a policy over collected traces: exits, answers, accuracy, costs, and the labels it learns."""

import numpy as np
import pytest

from adainfer.eval.traces import Collection
from adainfer.eval.replay import evaluate_policy, fit_on, replay_exits, training_labels
from adainfer.policies.calibrated import CalibratedPolicy
from adainfer.policies.decisions import stable_labels
from adainfer.policies.gap import GapThresholdPolicy


def _collection(gaps, top1, gold):
    gaps = np.asarray(gaps, dtype=np.float32)
    identity = {"num_layers": gaps.shape[1], "hidden_size": 8, "vocab_size": 10}
    return Collection(features=gaps[..., None], labels=(np.asarray(top1) == np.asarray(gold)[:, None]).astype(int),
                      top1=np.asarray(top1), gold=np.asarray(gold), seq_len=np.full(len(gold), 5),
                      feature_names=("gap",), model_identity=identity)


def test_report_counts_accuracy_savings_and_costs():
    collection = _collection(gaps=[[0.1, 0.9, 0.9, 0.9], [0.9, 0.1, 0.1, 0.1]],
                             top1=[[1, 2, 2, 2], [4, 3, 3, 3]], gold=[2, 3])
    report = evaluate_policy(GapThresholdPolicy(threshold=0.8), collection)
    assert report.dense_accuracy == 1.0
    assert report.accuracy == 0.5 and report.accuracy_change == -0.5
    assert report.mean_exit_layer == 1.5 and report.early_exits == 2 and report.correct_early_exits == 1
    assert report.oracle_layers_saved == pytest.approx(1 - 2 / 4)
    # Prefill units (L=4, h=8, V=10, s=5): a layer is 5 * 2(48 + 5) = 530, dense 4 * 530 + 10 = 2130;
    # exits at 2 and 1 read the lens twice and once: (1060 + 20) and (530 + 10).
    assert report.mean_lens_reads == 1.5
    assert report.honest_flops_ratio == pytest.approx((1080 / 2130 + 540 / 2130) / 2)


def test_schedule_pays_the_layer_before_the_first_check_for_agree_prev():
    collection = _collection(gaps=[[0.9, 0.9, 0.9, 0.9], [0.1, 0.1, 0.1, 0.1]],
                             top1=[[2, 2, 2, 2], [3, 3, 3, 3]], gold=[2, 3])
    plain = evaluate_policy(GapThresholdPolicy(threshold=0.8), collection, first_check=3)
    assert plain.mean_exit_layer == (3 + 4) / 2
    assert plain.mean_lens_reads == (1 + 2) / 2  # layer 3; layers 3 and 4
    agree = _collection(gaps=[[0.9, 0.9, 0.9, 0.9], [0.1, 0.1, 0.1, 0.1]], top1=[[2, 2, 2, 2], [3, 3, 3, 3]], gold=[2, 3])
    agree.feature_names = ("agree_prev",)
    policy = GapThresholdPolicy(threshold=0.8, feature="agree_prev")
    assert evaluate_policy(policy, agree, first_check=3).mean_lens_reads == (2 + 3) / 2


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_more_prompts():
    from adainfer.eval.replay import bootstrap_interval

    rng = np.random.default_rng(1)
    small, large = rng.integers(0, 2, 50), rng.integers(0, 2, 5000)
    low, high = bootstrap_interval([small])
    assert low <= small.mean() <= high and high - low > 0.1
    low_large, high_large = bootstrap_interval([large])
    assert high_large - low_large < (high - low) / 5
    assert bootstrap_interval([small]) == (low, high)  # seeded: the same interval every time


def test_candidate_policies_learn_and_are_scored_by_the_best_candidate():
    from adainfer.policies.svm import SVMPolicy

    top1 = np.array([[9, 9, 9], [9, 9, 9]])  # the full vocabulary's top-1 is never an answer word
    cand_top1 = np.array([[4, 5, 5], [5, 5, 4]])
    features = np.zeros((2, 3, 2), dtype=np.float32)
    collection = Collection(features=features, labels=(top1 == 4).astype(np.int64), top1=top1, gold=np.array([4, 4]),
                            seq_len=np.array([10, 10]), feature_names=("cand_gap", "gap"),
                            model_identity={"num_layers": 3, "hidden_size": 8, "vocab_size": 100},
                            candidate_ids=(4, 5), cand_top1=cand_top1)
    cheap, full = GapThresholdPolicy(0.5, "cand_gap"), SVMPolicy(("gap",))
    # Candidate policies learn when the best candidate stops changing, not whether it is gold.
    assert training_labels(cheap, collection).tolist() == [[0, 1, 1], [0, 0, 1]]
    assert training_labels(full, collection).tolist() == [[0, 0, 0], [0, 0, 0]]
    report = evaluate_policy(cheap, collection)  # never accepts: answers are the last layer's best candidate
    assert report.accuracy == 0.5 and report.dense_accuracy == 0.5
    assert report.honest_flops_ratio < 1.0  # two head rows per check, no full head at all


def test_a_measured_profile_prices_layers_and_lens_reads_in_seconds():
    from adainfer.engine.cost_profile import CostProfile

    collection = _collection(gaps=[[0.1, 0.9, 0.9, 0.9], [0.9, 0.1, 0.1, 0.1]],
                             top1=[[1, 2, 2, 2], [4, 3, 3, 3]], gold=[2, 3])
    profile = CostProfile(model_identity=collection.model_identity, device="cpu", torch_threads=1, seq_lens=(1, 100),
                          layer_seconds=(1.0, 1.0), full_check_seconds=(0.5, 0.5),
                          candidate_check_seconds=(0.01, 0.01), dense_seconds=(4.5, 4.5))
    report = evaluate_policy(GapThresholdPolicy(threshold=0.8), collection, profile=profile)
    # Exits at 2 and 1 with 2 and 1 reads: (2 + 1) / 4.5 and (1 + 0.5) / 4.5 of the dense 4 layers + 1 check.
    assert report.estimated_time_ratio == pytest.approx((3 / 4.5 + 1.5 / 4.5) / 2)
    assert evaluate_policy(GapThresholdPolicy(threshold=0.8), collection).estimated_time_ratio is None


def test_replayed_exits_answer_with_their_layer_and_compare_with_the_dense_answer_under_one_rule():
    collection = _collection(gaps=[[0.1] * 4] * 3, top1=[[1, 2, 2, 2], [4, 3, 3, 3], [5, 5, 6, 6]], gold=[2, 3, 5])
    collection.candidate_ids, collection.cand_top1 = (7, 8), np.array([[7, 8, 8, 8], [8, 8, 8, 7], [7, 7, 7, 7]])
    replayed = replay_exits(np.array([1, 4, 2]), collection)
    assert replayed.answers.tolist() == [1, 3, 5] and replayed.dense.tolist() == [2, 3, 6]
    assert replayed.correct.tolist() == [False, True, True] and replayed.dense_correct.tolist() == [True, True, False]
    assert replayed.changed.tolist() == [True, False, True]
    candidates = replay_exits(np.array([1, 4, 2]), collection, candidates_only=True)
    assert candidates.answers.tolist() == [7, 7, 7] and candidates.dense.tolist() == [8, 7, 7]


def test_a_label_free_policy_learns_the_models_own_stable_answers():
    top1 = [[1, 2, 2, 2], [4, 3, 4, 4], [5, 5, 5, 5]]
    collection = _collection(gaps=np.linspace(0, 1, 12).reshape(3, 4), top1=top1, gold=[9, 9, 9])
    assert not collection.labels.any()  # no layer is ever gold: the paper's label has nothing to teach
    policy = CalibratedPolicy(("gap",))
    np.testing.assert_array_equal(training_labels(policy, collection), stable_labels(np.array(top1)))
    assert fit_on(policy, collection) is policy and hasattr(policy, "threshold_grid_")
