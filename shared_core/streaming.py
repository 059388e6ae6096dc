"""Incremental detokenisation: text deltas that never split a UTF-8 character."""

from __future__ import annotations

from .stopping import StopMatcher

_REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    """Turns a growing list of token ids into text deltas.

    It re-decodes a short window of recent tokens (so tokenizers that merge spaces or bytes
    across tokens decode correctly) and withholds output while the window ends in an
    incomplete multi-byte character.
    """

    def __init__(self, tokenizer, *, skip_special_tokens: bool = False) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.token_ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (possibly ``""``)."""
        self.token_ids.append(token_id)
        prefix_text = self._decode(self.token_ids[self._prefix : self._read])
        full_text = self._decode(self.token_ids[self._prefix :])
        if full_text.endswith(_REPLACEMENT) or len(full_text) <= len(prefix_text):
            return ""
        delta = full_text[len(prefix_text) :]
        self._prefix, self._read = self._read, len(self.token_ids)
        return delta

    def flush(self) -> str:
        """Text of trailing tokens still withheld (an incomplete character at the very end)."""
        prefix_text = self._decode(self.token_ids[self._prefix : self._read])
        full_text = self._decode(self.token_ids[self._prefix :])
        self._prefix = self._read = len(self.token_ids)
        return full_text[len(prefix_text) :] if len(full_text) > len(prefix_text) else ""


class ResponseText:
    """The visible text of one sample: decoded, leading whitespace trimmed, stops applied.

    ``protect`` (``(begin, end)`` markers, e.g. of a grammar-constrained tool call) suspends
    the stop strings between the markers: a stop string inside such a segment does not end
    the sample, and text held back for a possible stop is released when a segment opens.
    """

    def __init__(
        self, tokenizer, stops: tuple[str, ...], *, protect: tuple[str, str] | None = None
    ) -> None:
        self.decoder = IncrementalDecoder(tokenizer)
        self.matcher = StopMatcher(stops)
        self.text = ""
        self._started = False
        self._protect = protect if stops else None
        self._inside = False
        self._recent = ""
        #: per pushed token, the decoded text it completed (leading whitespace trimmed); the
        #: visible text is always a prefix of their concatenation
        self.pieces: list[str] = []

    @property
    def stopped(self) -> bool:
        return self.matcher.stopped

    def push(self, token_id: int) -> str:
        """Add a generated token; return the newly visible text."""
        piece = self._trim(self.decoder.push(token_id))
        self.pieces.append(piece)
        return self._emit(self._feed(piece))

    def finish(self) -> str:
        """Flush everything held back; return the last visible text."""
        piece = self._trim(self.decoder.flush())
        if self.pieces:
            self.pieces[-1] += piece
        tail = self._feed(piece)
        return self._emit(tail + self.matcher.flush())

    def _feed(self, delta: str) -> str:
        """Pass ``delta`` through the stop matcher, except inside a protected segment."""
        if self._protect is None:
            return self.matcher.feed(delta)
        out = ""
        while delta:
            marker = self._protect[1] if self._inside else self._protect[0]
            window = self._recent + delta
            at = window.find(marker)
            if at < 0:
                out += delta if self._inside else self.matcher.feed(delta)
                self._recent = window[max(0, len(window) - len(marker) + 1) :]
                break
            cut = at + len(marker) - len(self._recent)
            head, delta = delta[:cut], delta[cut:]
            if self._inside:
                out += head
            else:  # a segment opens: release what was held back for a possible stop
                out += self.matcher.feed(head) + self.matcher.flush()
            self._inside = not self._inside
            self._recent = ""
        return out

    def _trim(self, delta: str) -> str:
        if not self._started:
            delta = delta.lstrip()
            self._started = bool(delta)
        return delta

    def _emit(self, delta: str) -> str:
        self.text += delta
        return delta
