"""Finals leave in request order whatever order results arrive in; a partial waits behind earlier finals."""

from __future__ import annotations

from whisper_stream.core.delivery import InOrder


def test_finals_leave_in_request_order():
    q: InOrder[str, str] = InOrder()
    for rid in (1, 2, 3):
        q.expect(rid)
    assert q.complete(3, "c") == [] and q.complete(2, "b") == []
    assert q.outstanding
    assert q.complete(1, "a") == ["a", "b", "c"]
    assert not q.outstanding


def test_a_partial_is_held_until_no_final_is_outstanding_and_a_newer_one_replaces_it():
    q: InOrder[str, str] = InOrder()
    q.expect(7)
    q.hold("old partial")
    q.hold("new partial")
    assert q.release_held() is None  # final 7 is still on its way
    assert q.complete(7, "final") == ["final"]
    assert q.release_held() == "new partial"
    assert q.release_held() is None
