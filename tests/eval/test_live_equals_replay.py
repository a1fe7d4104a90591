"""A replayed figure is what a live run measures: the same exit layers, lens reads and costs,
under the check schedule each policy learned."""

import numpy as np
import pytest

from adainfer.engine.model import EarlyExitModel
from adainfer.eval.traces import Collection
from adainfer.eval.replay import evaluate_policy
from adainfer.inference.predict import predict_batch
from adainfer.policies.calibrated import CalibratedPolicy
from adainfer.policies.calibrated_trees import CalibratedTreePolicy
from adainfer.policies.crf import CRFPolicy
from adainfer.policies.decisions import exit_layers, scheduled_decisions, stable_labels
from adainfer.policies.gap import GapThresholdPolicy
from adainfer.policies.svm import SVMPolicy

NAMES = ("gap", "top_prob", "depth", "agree_prev")
PROMPTS = [f"Q: {text}\nA:" for text in ("the cat sat", "a dog ran far", "red fish", "it rains today", "zero",
                                          "many small birds", "one more", "the end of it", "so it goes", "why not")]


@pytest.fixture(scope="module")
def model(tiny_llama_dir):
    return EarlyExitModel.from_pretrained(str(tiny_llama_dir))


@pytest.fixture(scope="module")
def traces(model) -> Collection:
    runs = [model.trace(prompt, NAMES) for prompt in PROMPTS]
    top1 = np.stack([run.top1 for run in runs])
    return Collection(features=np.stack([run.features for run in runs]), labels=stable_labels(top1), top1=top1,
                      gold=top1[:, -1], seq_len=np.array([run.seq_len for run in runs]), feature_names=NAMES,
                      model_identity=model.identity())


def _fit(policy, traces):
    X = traces.select(policy.features)
    depth = traces.select(("depth",))[..., 0]
    return policy.fit(X, (depth >= 0.5).astype(np.int64))  # exit from layer 2 of 4 on


@pytest.mark.parametrize("policy", [GapThresholdPolicy(0.6, feature="depth"), SVMPolicy(NAMES, kernel="linear"),
                                    CRFPolicy(("depth", "agree_prev"))], ids=["threshold", "svm", "crf"])
def test_live_run_equals_replay_under_the_learned_schedule(model, traces, policy):
    _fit(policy, traces)
    assert policy.first_check_ > 1  # a schedule that skips layers, so the test means something
    live = predict_batch(model, PROMPTS, policy)
    replay = evaluate_policy(policy, traces, first_check=policy.first_check_)
    assert replay.mean_exit_layer == pytest.approx(np.mean([result.exit_layer for result in live]))
    assert replay.mean_lens_reads == pytest.approx(np.mean([result.lens_reads for result in live]))
    assert replay.honest_flops_ratio == pytest.approx(np.mean([result.honest_flops_ratio for result in live]), abs=1e-4)
    assert all(result.first_check == policy.first_check_ for result in live)


CANDIDATES = (5, 7, 11, 13)
CLOSED = ("cand_gap", "cand_top_prob", "cand_agree_prev", "depth")


@pytest.fixture(scope="module")
def closed_traces(model) -> Collection:
    runs = [model.trace(prompt, CLOSED, CANDIDATES) for prompt in PROMPTS * 3]
    cand_top1 = np.stack([run.cand_top1 for run in runs])
    return Collection(features=np.stack([run.features for run in runs]), labels=stable_labels(cand_top1),
                      top1=np.stack([run.top1 for run in runs]), gold=cand_top1[:, -1],
                      seq_len=np.array([run.seq_len for run in runs]), feature_names=CLOSED,
                      model_identity=model.identity(), candidate_ids=CANDIDATES, cand_top1=cand_top1)


@pytest.mark.parametrize("policy", [CalibratedPolicy(CLOSED, first_check=2, stability=True),
                                    CalibratedTreePolicy(CLOSED, first_check=2, n_estimators=20),
                                    CalibratedPolicy(NAMES, first_check=3, stability=True)],
                         ids=["svm-stability-candidates", "trees-candidates", "svm-stability-full-lens"])
def test_stability_features_give_the_same_exits_live_and_replayed(model, traces, closed_traces, policy):
    """The stability columns come from the rows a walk shows the policy, so a live walk (which reads no
    lens before its first check) and a replayed full-depth trace decide alike, prompt by prompt, and a
    check reads no more lens than before."""
    collection = closed_traces if policy.features == CLOSED else traces
    reference = collection.cand_top1 if policy.features == CLOSED else collection.top1
    X = collection.select(policy.features)
    policy.fit(X, reference)
    margins = policy.margins(X)[:, policy.first_check - 1:-1]
    for quantile in np.linspace(0.1, 0.9, 9):  # a cut that exits prompts at different layers
        policy.threshold_ = float(np.quantile(margins, quantile))
        replayed = exit_layers(scheduled_decisions(policy, X[: len(PROMPTS)], policy.first_check_))
        if len(set(replayed.tolist())) > 1:
            break
    candidates = CANDIDATES if policy.features == CLOSED else None
    live = predict_batch(model, PROMPTS, policy, candidates)
    assert [result.exit_layer for result in live] == replayed.tolist()
    assert 1 < len(set(replayed.tolist()))  # some prompts exit earlier than others: the test can fail
    report = evaluate_policy(policy, collection.subset(slice(0, len(PROMPTS))), policy.first_check_)
    assert report.mean_lens_reads == pytest.approx(np.mean([result.lens_reads for result in live]))
