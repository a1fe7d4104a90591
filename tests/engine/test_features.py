import numpy as np
import pytest
import torch

from adainfer.engine.features import FeatureReader, KNOWN_FEATURES
from adainfer.engine.model import EarlyExitModel
from adainfer.inference.predict import predict
from adainfer.policies.gap import GapThresholdPolicy

PROMPT = "Q: the cat sat\nA:"
CANDIDATES = [66, 70, 80]  # three of the char tokenizer's ids
NEVER_ON_CANDIDATES = GapThresholdPolicy(threshold=2.0, feature="cand_gap")


@pytest.fixture(scope="module")
def model(tiny_llama_dir):
    return EarlyExitModel.from_pretrained(str(tiny_llama_dir))


def _sequential(model, names, candidates, full_vocab=None):
    inputs = model.executor.prepare(model.encode(PROMPT))
    hidden = inputs.embeddings
    readouts = []
    with FeatureReader(model.executor, names, candidates, full_vocab) as reader:
        reader.reset(hidden)
        for layer in range(model.num_layers):
            hidden = model.executor.run_layers(hidden, inputs, layer, layer + 1)
            readouts.append(reader.read(layer, hidden))
    return readouts


def test_one_lens_product_over_all_layers_reads_the_same_features_as_layer_by_layer(model):
    sequential = _sequential(model, KNOWN_FEATURES, CANDIDATES)
    trace = model.trace(PROMPT, KNOWN_FEATURES, CANDIDATES)
    np.testing.assert_allclose(trace.features, torch.cat([r.features for r in sequential]).numpy(), atol=1e-6)
    assert trace.top1.tolist() == [int(r.top1) for r in sequential]
    assert trace.cand_top1.tolist() == [int(r.cand_top1) for r in sequential]


def test_candidate_features_are_the_softmax_over_the_candidates_logits(model):
    inputs = model.executor.prepare(model.encode(PROMPT))
    last = model.executor.run_layers(inputs.embeddings, inputs, 0, 2)[:, -1]
    logits = model.executor.lens(last)
    restricted = model.executor.lens(last, rows=torch.tensor(CANDIDATES))
    torch.testing.assert_close(restricted, logits[:, CANDIDATES])
    probs = torch.softmax(logits[0, CANDIDATES], dim=-1).sort(descending=True).values
    trace = model.trace(PROMPT, ("cand_gap", "cand_top_prob"), CANDIDATES)
    np.testing.assert_allclose(trace.features[1], [probs[0] - probs[1], probs[0]], atol=1e-6)
    assert trace.cand_top1[1] == CANDIDATES[int(logits[0, CANDIDATES].argmax())]


def test_a_candidate_only_reader_never_runs_the_full_head(model):
    shapes = []
    handle = model.executor.head.register_forward_hook(lambda m, a, out: shapes.append(out.shape))
    try:
        readouts = _sequential(model, ("cand_gap", "depth"), CANDIDATES)
    finally:
        handle.remove()
    assert shapes == []  # the candidate lens multiplies by |C| rows of the weight, not the module
    full = _sequential(model, ("cand_gap", "depth"), CANDIDATES, full_vocab=True)
    for cheap, dense in zip(readouts, full):
        torch.testing.assert_close(cheap.features, dense.features)
        assert int(cheap.top1) == int(cheap.cand_top1) == int(dense.cand_top1)


def test_agreement_with_the_previous_layer_is_one_exactly_when_top1_repeats(model):
    trace = model.trace(PROMPT, ("agree_prev", "cand_agree_prev"), CANDIDATES)
    assert trace.features[0].tolist() == [0.0, 0.0]
    assert trace.features[1:, 0].tolist() == [float(a == b) for a, b in zip(trace.top1[1:], trace.top1[:-1])]
    assert trace.features[1:, 1].tolist() == [float(a == b) for a, b in zip(trace.cand_top1[1:], trace.cand_top1[:-1])]


def test_candidate_predictions_charge_candidate_checks_not_the_vocabulary(model):
    result = predict(model, PROMPT, NEVER_ON_CANDIDATES, candidate_ids=CANDIDATES)
    cost = model.cost_model
    assert result.answer_token_id in CANDIDATES
    assert result.honest_flops_ratio == pytest.approx(
        cost.honest_flops_ratio(result.exit_layer, result.seq_len, result.exit_layer, len(CANDIDATES)))
    full = predict(model, PROMPT, GapThresholdPolicy(threshold=2.0))
    assert result.honest_flops_ratio < full.honest_flops_ratio


@pytest.mark.parametrize("names, candidates, full_vocab, message", [
    (("cand_gap",), None, None, "candidate answer tokens"),
    (("gap",), CANDIDATES, False, "full-vocabulary lens"),
    (("depth",), None, False, "needs candidate tokens"),
])
def test_reader_refuses_features_it_cannot_compute(model, names, candidates, full_vocab, message):
    with pytest.raises(ValueError, match=message):
        FeatureReader(model.executor, names, candidates, full_vocab)
