"""Stop strings matched on decoded text, across token boundaries."""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Feeds text increments and reports which part is final.

    Text that could still be the start of a stop string is held back, so a streaming consumer
    never sees the beginning of a stop string that later completes. When a stop string
    appears, everything from its first character on is dropped.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Add ``text``; return the newly final text (empty while a stop might be forming)."""
        if self.stopped or not text:
            return ""
        if not self.stops:
            return text
        buffer = self._pending + text
        cut = min((i for i in (buffer.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._pending = ""
            return buffer[:cut]
        hold = self._longest_partial(buffer)
        self._pending = buffer[len(buffer) - hold :]
        return buffer[: len(buffer) - hold]

    def flush(self) -> str:
        """Release text held back for a stop string that never completed."""
        pending, self._pending = self._pending, ""
        return "" if self.stopped else pending

    def _longest_partial(self, buffer: str) -> int:
        """Length of the longest suffix of ``buffer`` that is a proper prefix of a stop."""
        best = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(buffer)), best, -1):
                if buffer.endswith(stop[:size]):
                    best = size
                    break
        return best
