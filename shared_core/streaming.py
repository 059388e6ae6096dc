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
    """The visible text of one sample: decoded, leading whitespace trimmed, stops applied."""

    def __init__(self, tokenizer, stops: tuple[str, ...]) -> None:
        self.decoder = IncrementalDecoder(tokenizer)
        self.matcher = StopMatcher(stops)
        self.text = ""
        self._started = False

    @property
    def stopped(self) -> bool:
        return self.matcher.stopped

    def push(self, token_id: int) -> str:
        """Add a generated token; return the newly visible text."""
        return self._emit(self.matcher.feed(self._trim(self.decoder.push(token_id))))

    def finish(self) -> str:
        """Flush everything held back; return the last visible text."""
        tail = self.matcher.feed(self._trim(self.decoder.flush()))
        return self._emit(tail + self.matcher.flush())

    def _trim(self, delta: str) -> str:
        if not self._started:
            delta = delta.lstrip()
            self._started = bool(delta)
        return delta

    def _emit(self, delta: str) -> str:
        self.text += delta
        return delta
