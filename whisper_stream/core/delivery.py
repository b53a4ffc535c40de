"""Delivery order: finals leave in the order they were requested, whatever order the engine answers in.

Engines batch and may answer a later final first (a shorter window, a retry); a client must still see
utterance 3 before utterance 4, and a partial must never overtake a final it follows. Pure bookkeeping,
no messages: the session decides what each released item becomes.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")
P = TypeVar("P")


class InOrder(Generic[T, P]):
    """Finals (`T`) released in request order; a partial (`P`) held while any final is outstanding.

    Memory: one entry per final in flight (bounded by the session's finals in flight) plus one partial."""

    def __init__(self) -> None:
        self._order: list[int] = []  # request ids of finals not yet released, in request order
        self._done: dict[int, T] = {}
        self._held: P | None = None

    @property
    def outstanding(self) -> int:
        """How many finals have been requested and not released yet."""
        return len(self._order)

    def last(self) -> int | None:
        """The latest final requested and not released yet."""
        return self._order[-1] if self._order else None

    def waiting(self, request_id: int) -> T | None:
        """A final's outcome, recorded and held behind an earlier one."""
        return self._done.get(request_id)

    def expect(self, request_id: int) -> None:
        self._order.append(request_id)

    def complete(self, request_id: int, item: T) -> list[T]:
        """Record a final's outcome; return every final that can now leave, in order."""
        self._done[request_id] = item
        out = []
        while self._order and self._order[0] in self._done:
            out.append(self._done.pop(self._order.pop(0)))
        return out

    def hold(self, partial: P) -> None:
        """Keep a partial until the finals before it have left (a newer one replaces it)."""
        self._held = partial

    def release_held(self) -> P | None:
        """The held partial, once no final is outstanding."""
        if self._order or self._held is None:
            return None
        held, self._held = self._held, None
        return held
