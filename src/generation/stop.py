"""Cutting a stream of text where a stop text first appears, holding back only what might be the start of one."""

from __future__ import annotations

from typing import TextIO


class StopAtText:
    """Streams a sample's text to ``out``, holding back just enough to cut it where a ``stops`` text first appears
    (the earliest, when there are several)."""

    def __init__(self, out: TextIO, stops: str | list[str] | None) -> None:
        self.stops = [stops] if isinstance(stops, str) else [s for s in stops or [] if s]
        self.out, self.pending = out, ""
        self.keep = max(map(len, self.stops), default=1) - 1  # a stop text may be arriving in pieces

    def write(self, text: str) -> bool:
        """Write what is safe to show; True once a stop text has appeared (nothing from it on is written)."""
        self.pending += text
        found = [self.pending.index(stop) for stop in self.stops if stop in self.pending]
        if found:
            self.pending = self.pending[: min(found)]
            self.close()
            return True
        cut = max(len(self.pending) - self.keep, 0)
        shown, self.pending = self.pending[:cut], self.pending[cut:]
        self.out.write(shown)
        self.out.flush()
        return False

    def close(self) -> None:
        self.out.write(self.pending)
        self.out.flush()
        self.pending = ""
