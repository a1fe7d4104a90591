"""The one lens: every kind of rows reads the same logits as the full head, soft-cap included."""

import pytest
import torch

from adainfer.engine.executor import LayerExecutor
from adainfer.engine.families import family_of
from adainfer.engine.lens import HeadRows, Lens
from adainfer.testing.tiny_models import TINY_CONFIGS, VOCAB, tiny_model


HIDDEN = 32  # every tiny family's hidden size (OPT projects it to 16 after its final norm)


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def lens(request):
    model = tiny_model(request.param)
    return Lens(model, family_of(model))


def _hidden(lens: Lens, rows: int = 3, seed: int = 0) -> torch.Tensor:
    """Hidden states (rows, HIDDEN) as a layer would hand them to the lens."""
    return torch.randn(rows, HIDDEN, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_only_the_soft_capped_families_cap_their_logits(family):
    model = tiny_model(family)
    lens = Lens(model, family_of(model))
    assert lens.logit_softcap == (3.0 if family in ("gemma2", "gemma3") else None)
    assert lens(_hidden(lens)).shape == (3, VOCAB) and lens.vocab_size == VOCAB


def test_candidate_ids_and_head_rows_read_the_same_columns_as_the_full_vocabulary(lens):
    hidden = _hidden(lens, seed=1)
    full = lens(hidden)
    ids = torch.tensor([5, 90, 17])
    torch.testing.assert_close(lens(hidden, rows=ids), full[:, ids])
    rows = HeadRows(lens, first_ids=10, extra_ids=[60, 3, 60])  # 3 is among the first ten already
    rows.add(44)
    rows.add(7)  # already read: nothing appended
    assert rows.token_ids == [*range(10), 60, 44] and len(rows) == 12
    torch.testing.assert_close(lens(hidden, rows=rows), full[:, rows.token_ids])
    assert [rows.token_at(column) for column in (0, 9, 10, 11)] == [0, 9, 60, 44]


def test_a_weight_major_read_sums_the_same_product_in_another_order(lens):
    hidden = _hidden(lens, rows=4, seed=2)
    torch.testing.assert_close(lens(hidden, weight_major=True), lens(hidden), atol=1e-5, rtol=0)


def test_the_soft_cap_bounds_every_read_of_a_capped_family():
    model = tiny_model("gemma2")
    lens = Lens(model, family_of(model))
    assert lens.logit_softcap == 3.0
    hidden = 50 * torch.randn(2, HIDDEN, generator=torch.Generator().manual_seed(3))
    for rows in (None, torch.tensor([1, 2]), HeadRows(lens, first_ids=20)):
        assert lens(hidden, rows=rows).abs().max() <= 3.0


def test_the_executor_reads_through_its_lens():
    model = tiny_model("opt")  # a projection after the final norm
    executor = LayerExecutor(model)
    assert isinstance(executor.lens, Lens) and executor.head is executor.lens.head
    assert executor.lens.post_norm_projection is not None


def test_head_rows_refuse_ids_outside_the_vocabulary_and_an_empty_set(lens):
    with pytest.raises(ValueError, match=f"0..{VOCAB - 1}"):
        HeadRows(lens, extra_ids=[VOCAB])
    with pytest.raises(ValueError, match="no head rows"):
        HeadRows(lens)
