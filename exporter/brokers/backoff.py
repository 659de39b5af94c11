"""Capped, jittered exponential backoff for broker reconnects.

Pure: the random source is injected, nothing sleeps here. A stream asks ``next_delay()`` after each
failed (re)connect and calls ``reset()`` once a connection has delivered, so a broker that flaps every
few minutes is retried quickly each time while one that stays down is polled at most every ``cap``
seconds. "Full jitter" (a uniform draw from ``[base_delay * (1 - jitter), base_delay]``) keeps a fleet of
exporters from reconnecting in lockstep after a broker restart.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """``initial * factor**attempt`` capped at ``cap``, reduced by up to ``jitter`` of itself."""

    __slots__ = ("_rng", "attempt", "cap", "factor", "initial", "jitter")

    def __init__(
        self,
        initial: float = 0.5,
        cap: float = 30.0,
        factor: float = 2.0,
        jitter: float = 0.5,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if initial <= 0 or cap < initial or factor < 1 or not 0 <= jitter <= 1:
            raise ValueError("need 0 < initial <= cap, factor >= 1 and 0 <= jitter <= 1")
        self.initial = initial
        self.cap = cap
        self.factor = factor
        self.jitter = jitter
        self._rng = rng
        self.attempt = 0

    def peek(self) -> float:
        """The un-jittered delay the next ``next_delay()`` is drawn below."""
        # Stop growing the exponent once capped, so a broker down for days cannot overflow the float.
        base = self.initial * self.factor**self.attempt
        return self.cap if base >= self.cap else base

    def next_delay(self) -> float:
        """The delay to wait before the next attempt; each call counts one more failure."""
        base = self.peek()
        if base < self.cap:
            self.attempt += 1
        return base * (1.0 - self.jitter * self._rng())

    def reset(self) -> None:
        self.attempt = 0
