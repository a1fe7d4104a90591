"""Measured cost profiles: measuring on tiny models, the time ratio on a hand-built profile, JSON."""

import json

import pytest

from adainfer.engine.cost_profile import CostProfile, measure_cost_profile
from adainfer.engine.model import EarlyExitModel
from adainfer.testing.tiny_models import TINY_CONFIGS, save_tiny_model

# A hand-built profile of a 4-layer model. At 10 tokens a layer takes 1 ms, a full check 2 ms and a
# candidate check 0.5 ms; at 30 tokens 3 ms, 4 ms and 1 ms.
HAND = CostProfile(
    model_identity={"architecture": "Toy", "num_layers": 4},
    device="cpu", torch_threads=1, seq_lens=(10, 30),
    layer_seconds=(0.001, 0.003), full_check_seconds=(0.002, 0.004),
    candidate_check_seconds=(0.0005, 0.001), dense_seconds=(0.006, 0.016),
)


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    return EarlyExitModel.from_pretrained(str(tiny_llama_dir))


def test_measuring_a_tiny_model_gives_positive_times_per_length(tiny):
    seen = []
    profile = measure_cost_profile(tiny, [16, 4], repeats=2, candidate_count=3, on_seq_len=seen.append)
    assert profile.seq_lens == (4, 16) and seen == [4, 16]  # sorted, reported as done
    for times in (profile.layer_seconds, profile.full_check_seconds, profile.candidate_check_seconds,
                  profile.dense_seconds):
        assert len(times) == 2 and all(seconds > 0 for seconds in times)
    assert profile.model_identity == tiny.identity() and profile.num_layers == 4
    assert profile.device == "cpu" and profile.torch_threads >= 1
    assert profile.candidate_count == 3 and profile.repeats == 2


def test_measuring_refuses_bad_lengths(tiny):
    with pytest.raises(ValueError, match="seq_lens"):
        measure_cost_profile(tiny, [0, 8])
    with pytest.raises(ValueError, match="seq_lens"):
        measure_cost_profile(tiny, [tiny.max_context + 1])
    with pytest.raises(ValueError, match="repeats"):
        measure_cost_profile(tiny, [8], repeats=0)


def test_time_ratio_by_hand():
    # At s=10: dense = 4*1 + 2 = 6 ms. Exit 2 with 2 full checks: 2*1 + 2*2 = 6 ms -> 1.0.
    assert HAND.estimated_time_ratio(2, 10, 2, candidate_check=False) == pytest.approx(1.0)
    # Candidate checks: 2*1 + 2*0.5 = 3 ms -> 0.5.
    assert HAND.estimated_time_ratio(2, 10, 2, candidate_check=True) == pytest.approx(0.5)
    assert HAND.estimated_time_ratio(4, 10, 1, candidate_check=False) == pytest.approx(1.0)
    assert HAND.estimated_time_ratio(1, 10, 0, candidate_check=False) == pytest.approx(1 / 6)


def test_interpolation_is_linear_between_lengths_and_clamped_outside():
    assert HAND.layer_seconds_at(20) == pytest.approx(0.002)
    assert HAND.check_seconds_at(20) == pytest.approx(0.003)
    assert HAND.check_seconds_at(20, candidate_check=True) == pytest.approx(0.00075)
    assert HAND.layer_seconds_at(1) == pytest.approx(0.001)
    assert HAND.layer_seconds_at(1000) == pytest.approx(0.003)
    # At s=20: dense 4*2 + 3 = 11 ms; exit 3 with 1 full check: 6 + 3 = 9 ms.
    assert HAND.estimated_time_ratio(3, 20, 1, candidate_check=False) == pytest.approx(9 / 11)


@pytest.mark.parametrize("args, name", [((0, 10, 1), "exit_layer"), ((5, 10, 1), "exit_layer"),
                                        ((2, 0, 1), "seq_len"), ((2, 10, 5), "layers_checked")])
def test_time_ratio_refuses_bad_input(args, name):
    with pytest.raises(ValueError, match=name):
        HAND.estimated_time_ratio(*args, candidate_check=False)


def test_json_round_trip(tmp_path):
    path = tmp_path / "sub" / "profile.json"
    HAND.save(path)
    assert CostProfile.load(path) == HAND
    assert [entry.name for entry in path.parent.iterdir()] == ["profile.json"]  # no temp file left
    assert json.loads(path.read_text())["layer_seconds"] == [0.001, 0.003]


def test_round_trip_of_a_measured_profile(tiny, tmp_path):
    profile = measure_cost_profile(tiny, [5], repeats=1)
    profile.save(tmp_path / "p.json")
    assert CostProfile.load(tmp_path / "p.json") == profile


def test_save_replaces_an_existing_file(tmp_path):
    path = tmp_path / "profile.json"
    path.write_text("old")
    HAND.save(path)
    assert CostProfile.load(path) == HAND


@pytest.mark.parametrize("change, message", [
    ({"seq_lens": [30, 10]}, "increasing"),
    ({"layer_seconds": [0.001]}, "layer_seconds has 1 entries"),
    ({"dense_seconds": [0.0, 0.01]}, "positive"),
    ({"model_identity": {}}, "num_layers"),
])
def test_bad_profiles_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        CostProfile.from_dict({**HAND.to_dict(), **change})


def test_missing_key_is_a_value_error():
    data = HAND.to_dict()
    del data["full_check_seconds"]
    with pytest.raises(ValueError, match="full_check_seconds"):
        CostProfile.from_dict(data)


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_every_family_can_be_profiled(family, tmp_path):
    # The dense forward must accept `logits_to_keep`, and the executor must drive the layers.
    model = EarlyExitModel.from_pretrained(str(save_tiny_model(family, tmp_path)))
    profile = measure_cost_profile(model, [6], repeats=1, candidate_count=2)
    assert profile.num_layers == model.num_layers and profile.dense_seconds[0] > 0
