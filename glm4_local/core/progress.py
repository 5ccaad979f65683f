"""What long file work reports (convert, quantize, repair, eval): phases, bytes and tensors done.

The base class reports to nobody, so library code can always call it; a front-end subclasses it
(e.g. a progress bar on a terminal).
"""

from __future__ import annotations


class Progress:
    """A phase starting with its byte and tensor totals, then bytes and tensors done."""

    def start(self, phase: str, total_bytes: int, total_tensors: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...

    def tensor_done(self) -> None: ...
