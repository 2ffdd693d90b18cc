"""When the worker SDK asks for its API token to be renewed while its slots are busy (issue #12 item 1)."""

from __future__ import annotations

import jwt
import pytest

from stateport.worker.client import renewal_due_in, still_due


def token(iat: int, exp: int) -> str:
    return jwt.encode({"sub": "w", "iat": iat, "exp": exp}, "any-key-" + "k" * 60, "HS512")


def test_halfway_through_the_servers_renewal_window() -> None:
    # 600 s: the server renews in the last 300 s (half); the worker asks 150 s before expiry.
    assert renewal_due_in(token(1000, 1600), now=1000) == 450
    # 5 s: the 30 s floor covers the whole life; the worker asks halfway, 2.5 s before expiry.
    assert renewal_due_in(token(1000, 1005), now=1001) == 1.5
    # Already due: a negative delay (ask at once).
    assert renewal_due_in(token(1000, 1600), now=1590) == -140


@pytest.mark.parametrize("text", ["", "opaque", "a.b.c", "a.e30.c", token(1000, 1000)])
def test_a_token_it_cannot_read_is_never_renewed_early(text: str) -> None:
    assert renewal_due_in(text, now=0) is None


def test_a_token_renewed_meanwhile_is_no_longer_due() -> None:
    # The keep-alive found the token already renewed by another answer (and was not renewed again): quiet.
    assert not still_due(token(1590, 2190), now=1591)
    # Still the old one, past the renewal point: the server declined, worth a warning.
    assert still_due(token(1000, 1600), now=1590)
    assert still_due("opaque", now=0)
