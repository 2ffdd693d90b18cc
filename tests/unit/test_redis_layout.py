"""A Redis key segment is ``quote(text, safe="")`` byte for byte: the Lua scripts quote the same way."""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st

from stateport.adapters.redis.layout import segment


@given(st.text())
def test_a_segment_is_the_text_quoted_with_nothing_safe(text: str) -> None:
    assert segment(text) == quote(text, safe="")


@given(st.text(alphabet="abcXYZ019_.~-/:{}% \n\u00e9"))
def test_a_segment_of_mostly_plain_characters_is_the_text_quoted_with_nothing_safe(text: str) -> None:
    assert segment(text) == quote(text, safe="")
