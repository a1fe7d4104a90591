"""Completions without HTTP: the stop-string holdback, the prompt checks, and the worker's generation job."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adainfer.engine.model import EarlyExitModel
from adainfer.inference.generate import generate
from adainfer.serve.completions import CompletionEvent, GenerationCancelled, GenerationJob, StopHoldback, check_prompts


def released(stops: list[str], pieces: list[str]) -> list[str]:
    holdback = StopHoldback(stops)
    return [holdback.feed(piece) for piece in pieces]


def test_a_stop_string_split_over_pieces_is_never_sent_nor_what_follows():
    assert released(["</s>"], ["ab", "c<", "/s", ">rest", "more"]) == ["ab", "c", "", "", ""]


def test_a_held_tail_that_does_not_become_a_stop_is_sent_with_the_next_piece():
    assert released(["<end>"], ["a<e", "x", "y"]) == ["a", "<ex", "y"]


def test_the_earliest_of_several_stops_ends_the_text_and_no_stop_passes_everything():
    assert "".join(released(["zz", "b"], ["aaz", "zb"])) == "aa"
    assert released([], ["a", "b<", "c"]) == ["a", "b<", "c"]


def cut_where_generation_stops(pieces: list[str], stops: list[str]) -> tuple[str, int]:
    """What generation returns (`inference.stream`'s rule): it stops after the first piece that
    completes a stop string, and the text is cut where the earliest stop found by then starts.
    Returns that text and how many pieces were generated."""
    text = ""
    for count, piece in enumerate(pieces, start=1):
        text += piece
        found = [text.find(stop) for stop in stops if stop in text]
        if found:
            return text[:min(found)], count
    return text, len(pieces)


@given(st.text("ab<>", max_size=30), st.lists(st.text("ab<>", min_size=1, max_size=3), max_size=3),
       st.lists(st.integers(1, 29), max_size=6))
def test_what_is_sent_is_always_a_prefix_of_the_text_generation_returns(text, stops, cuts):
    bounds = sorted({0, len(text), *(cut for cut in cuts if cut < len(text))})
    pieces = [text[start:stop] for start, stop in zip(bounds, bounds[1:])]
    final, generated = cut_where_generation_stops(pieces, stops)
    holdback, sent = StopHoldback(stops), ""
    for piece in pieces[:generated]:
        sent += holdback.feed(piece)
        assert final.startswith(sent)
    if final != "".join(pieces[:generated]):  # a stop ended it: everything before the stop was sent
        assert sent == final
    else:  # only a possible stop's start is held back
        assert len(final) - len(sent) < max((len(stop) for stop in stops), default=1)


def test_a_short_stop_inside_a_longer_one_ends_generation_before_the_longer_completes():
    # Found by the test above (hypothesis): "a" completes first, so "<a<" never does.
    assert released(["a", "<a<"], ["<a"]) == ["<"]
    assert cut_where_generation_stops(["<a", "<"], ["a", "<a<"]) == ("<", 1)


@pytest.fixture(scope="module")
def model(tiny_spaced_dir) -> EarlyExitModel:
    return EarlyExitModel.from_pretrained(str(tiny_spaced_dir))


def test_prompts_are_refused_before_generation_when_blank_or_without_room(model):
    check_prompts(model, ["Q: fine\nA:"], 10)
    with pytest.raises(ValueError, match="prompt 1: empty prompt"):
        check_prompts(model, ["Q: fine\nA:", "   "], 10)
    with pytest.raises(ValueError, match=f"prompt 0 has 3 tokens .* use at most {model.max_context - 3}"):
        check_prompts(model, ["abc"], model.max_context)


def test_a_streamed_job_emits_exactly_the_generated_text_cut_at_the_stop(model):
    prompt = "Q: red cat 3\nA:"
    reference = generate(model, prompt, 30)
    stop = reference.text[12:14]  # a string the model produces, so the text is cut there
    events: list[CompletionEvent] = []
    counted: list[int] = []
    job = GenerationJob(model, [prompt, "Q: blue\nA:"], 30, [stop], emit=events.append,
                        count_token=lambda: counted.append(1))
    results = job(threading.Event())
    assert results[0].text == reference.text[:reference.text.find(stop)] and results[0].finish_reason == "stop"
    assert results[1].text == generate(model, "Q: blue\nA:", 30, stop=stop).text
    for index, result in enumerate(results):
        pieces = [event for event in events if event.index == index]
        assert "".join(event.text for event in pieces) == result.text
        assert [event.finish_reason for event in pieces].count(None) == len(pieces) - 1
    assert len(counted) == sum(len(result.token_ids) for result in results)


def test_a_cancelled_job_stops_at_its_next_token(model):
    cancelled = threading.Event()
    emitted: list[CompletionEvent] = []

    def emit(event: CompletionEvent) -> None:
        emitted.append(event)
        cancelled.set()  # the client leaves after the first piece

    with pytest.raises(GenerationCancelled):
        GenerationJob(model, ["The"], 500, [], emit=emit)(cancelled)
    assert len(emitted) == 1
