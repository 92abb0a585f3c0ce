"""Stop strings found in a reply's text as it streams, in time linear in the text."""


class StopMatcher:
    """One stop string's Knuth-Morris-Pratt automaton: fed the text a character at a time, its `matched` is
    the length of the longest start of the stop string the text so far ends with (all of it: a match). Each
    character costs O(1) amortized, whatever the stop string's length."""

    def __init__(self, stop: str):
        self.stop = stop
        # fallback[n]: the longest proper start of stop[:n] that stop[:n] also ends with.
        self.fallback = [0] * (len(stop) + 1)
        k = 0
        for n in range(2, len(stop) + 1):
            while k and stop[n - 1] != stop[k]:
                k = self.fallback[k]
            if stop[n - 1] == stop[k]:
                k += 1
            self.fallback[n] = k
        self.matched = 0

    def feed(self, char: str) -> bool:
        """Whether the stop string ends with this character."""
        stop, k = self.stop, self.matched
        while k and char != stop[k]:
            k = self.fallback[k]
        if char == stop[k]:
            k += 1
        self.matched = k
        return k == len(stop)


class StopScanner:
    """Passes text on, holding back what could be the start of a stop string. Linear in the text fed: each stop
    string's automaton (StopMatcher) reads each character once, so a long stop string costs no more a token."""

    def __init__(self, stops: list[str]):
        self.matchers = [StopMatcher(s) for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string was reached)."""
        # The first stop string in the list that the text holds wins, cut where it begins.
        ends = [self._first_match(matcher, text) for matcher in self.matchers]
        found = next((end - len(m.stop) for m, end in zip(self.matchers, ends, strict=True) if end is not None), None)
        self.pending += text
        if found is not None:
            out = self.pending[:found]
            self._reset()
            return out, True
        hold = max((m.matched for m in self.matchers), default=0)
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def _first_match(self, matcher: StopMatcher, text: str) -> int | None:
        """Feed the matcher the text: where in pending + text its first match ends, else None. What is held back
        holds no whole stop string, so a match ends in the new text."""
        for i, char in enumerate(text):
            if matcher.feed(char):
                return len(self.pending) + i + 1
        return None

    def flush(self) -> str:
        out = self.pending
        self._reset()
        return out

    def _reset(self) -> None:
        self.pending = ""
        for matcher in self.matchers:
            matcher.matched = 0
