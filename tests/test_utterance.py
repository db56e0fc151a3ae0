"""The excerpt of a long message that the intent service classifies (shared.utterance)."""

from __future__ import annotations

from hypothesis import given, settings as hsettings, strategies as st

from shared.utterance import ELLIPSIS, intent_excerpt


def test_a_message_within_the_limit_is_sent_whole_with_whitespace_folded():
    assert intent_excerpt("  where is\n\n my   order? ", 1000) == "where is my order?"
    assert intent_excerpt("배송 조회 좀 해주세요", 1000) == "배송 조회 좀 해주세요"


def test_a_long_message_is_classified_on_its_first_and_last_sentences():
    text = ("Hi there, I need help. " + "This is a long story about my week and my family. " * 40
            + "I waited all week. Where is my order 20261119-0042?")
    assert intent_excerpt(text, 1000) == ("Hi there, I need help." + ELLIPSIS + "This is a long story about my week "
                                          "and my family. " * 4 + "I waited all week. Where is my order 20261119-0042?")


def test_a_long_text_without_sentences_keeps_its_beginning_and_end_at_word_boundaries():
    text = "hi there i need help " + "filler words go here " * 200 + "where is my order 20261119-0042"
    e = intent_excerpt(text, 1000)
    assert len(e) <= 1000 and ELLIPSIS in e
    assert e.startswith("hi there i need help") and e.endswith("where is my order 20261119-0042")
    head, tail = e.split(ELLIPSIS)
    assert head.split()[-1] in text.split() and tail.split()[0] in text.split()  # no word cut in half


def test_korean_without_spaces_is_cut_hard_but_within_the_limit():
    text = "가" * 3000 + " 배송 조회"
    e = intent_excerpt(text, 1000)
    assert len(e) <= 1000 and e.endswith("배송 조회") and e.startswith("가")


@hsettings(max_examples=300, deadline=None)
@given(st.text(min_size=0, max_size=4000), st.integers(min_value=20, max_value=1000))
def test_the_excerpt_never_exceeds_the_limit(text, limit):
    e = intent_excerpt(text, limit)
    assert len(e) <= limit
    if len(" ".join(text.split())) <= limit:
        assert e == " ".join(text.split())
