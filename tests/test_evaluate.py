import numpy as np
import pytest

from adainfer.collect import Collection
from adainfer.evaluate import evaluate_policy, exit_layers, oracle_exit_layers
from adainfer.policies import GapThresholdPolicy


def test_exit_layer_is_first_accepted_and_last_when_none():
    decisions = np.array([[0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]])
    assert exit_layers(decisions).tolist() == [2, 4, 1, 4]


def test_oracle_is_where_top1_settles_on_the_final_token():
    top1 = np.array([[5, 7, 7, 7], [7, 5, 7, 9], [3, 3, 3, 3], [1, 2, 1, 2]])
    assert oracle_exit_layers(top1).tolist() == [2, 4, 1, 4]


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
    assert report.honest_flops_ratio > report.paper_flops_ratio


def test_candidate_policies_learn_and_are_scored_by_the_best_candidate():
    from adainfer.collect import Collection
    from adainfer.evaluate import training_labels
    from adainfer.policies import GapThresholdPolicy, SVMPolicy

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
