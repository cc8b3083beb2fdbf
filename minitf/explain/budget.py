"""The LLM's call budget: at most ``max_calls`` requests sent to the server.

Only cache misses count, and a request's retries count once. The request after the last one raises
:class:`BudgetExhausted`; what was answered so far is cached, so a rerun with a higher budget continues
where this one stopped.
"""
from __future__ import annotations

import threading

from minitf.errors import MinitfError
from minitf.util.fmt import count


class BudgetExhausted(MinitfError):
    """The call budget is spent (``max_calls`` requests sent); the answers so far are cached."""

    def __init__(self, max_calls: int, calls_made: int, cache_hits: int):
        super().__init__(f"`max_calls` {max_calls} reached: {count(calls_made, 'call')} made, "
                         f"{count(cache_hits, 'cache hit')}; answers so far are cached, rerun with a higher "
                         "`max_calls` to continue", param="max_calls")
        self.max_calls, self.calls_made, self.cache_hits = max_calls, calls_made, cache_hits


class CallBudget:
    """Counts the requests sent; ``max_calls=None``: no limit. Thread-safe."""

    def __init__(self, max_calls: int | None = None):
        if max_calls is not None and max_calls < 0:
            raise MinitfError(f"`max_calls`: must be 0 or more, got {max_calls}", param="max_calls")
        self.max_calls = max_calls
        self.calls_made = 0
        self._lock = threading.Lock()

    def spend(self, cache_hits: int = 0) -> None:
        """Count one request about to be sent, or raise BudgetExhausted (``cache_hits`` is for its message)."""
        with self._lock:
            if self.max_calls is not None and self.calls_made >= self.max_calls:
                raise BudgetExhausted(self.max_calls, self.calls_made, cache_hits)
            self.calls_made += 1
