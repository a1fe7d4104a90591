"""The token stream: text streamed once a character is complete, and the ids that end generation."""

from types import SimpleNamespace

from adainfer.inference.stream import GeneratedToken, TokenStream, eos_token_ids


def test_a_character_split_over_byte_tokens_is_streamed_once_complete():
    pieces = {1: b"\xc3", 2: b"\xa9", 3: b"!"}
    tokenizer = SimpleNamespace(decode=lambda ids, skip_special_tokens: b"".join(pieces[i] for i in ids)
                                .decode("utf-8", errors="replace"))
    config = SimpleNamespace(eos_token_id=None)
    model = SimpleNamespace(tokenizer=tokenizer, model=SimpleNamespace(generation_config=config, config=config))
    seen: list[GeneratedToken] = []
    output = TokenStream(model, 3, [], seen.append)
    for token in (1, 2, 3):
        output.emit(token, 1)
    assert [token.text for token in seen] == ["", "é", "!"] and output.text == "é!"


def test_end_of_sequence_ids_come_from_the_generation_config_first():
    def model(generation, config):
        return SimpleNamespace(model=SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=generation),
                                                     config=SimpleNamespace(eos_token_id=config)))

    assert eos_token_ids(model([1, 106], 2)) == {1, 106}
    assert eos_token_ids(model(None, 2)) == {2}
    assert eos_token_ids(model(None, None)) == set()
