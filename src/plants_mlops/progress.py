"""Progress of a step that takes more than a few seconds: a tqdm bar when stderr is a
terminal, and a log line every ``every_s`` seconds otherwise (log files, the demo's file,
ZenML step logs), so a long step is never silent and a log is never flooded."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from tqdm.auto import tqdm

# Seconds between two progress lines in a log.
LOG_EVERY_S = 10.0
# The attribute a progress record carries (the demo's console shows these records too).
PROGRESS = "plants_progress"


class Progress:
    """``update(n)`` as work is done; ``close()`` (or a ``with`` block) at the end."""

    def __init__(
        self,
        total: int,
        desc: str,
        logger: logging.Logger,
        *,
        unit: str = "img",
        bar: bool = True,
        every_s: float | None = None,
    ) -> None:
        self.total, self.desc, self.unit, self.log = total, desc, unit, logger
        self.every_s = LOG_EVERY_S if every_s is None else every_s
        self.done = 0
        self.started = self.last_line = time.monotonic()
        on_terminal = bar and total > 0 and sys.stderr.isatty()
        self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False, disable=not on_terminal)
        self.to_log = not on_terminal

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.done += n
        if postfix:
            self.bar.set_postfix(refresh=False, **postfix)
        self.bar.update(n)
        now = time.monotonic()
        if self.to_log and now - self.last_line >= self.every_s and self.done < self.total:
            self.last_line = now
            self.log.info("%s", self.line(now), extra={PROGRESS: True})

    def line(self, now: float | None = None) -> str:
        """``embeddings: 120/530 img (23 %), 11 s, about 37 s left``."""
        elapsed = (now or time.monotonic()) - self.started
        share = self.done / self.total if self.total else 1.0
        left = f", about {elapsed / share - elapsed:.0f} s left" if 0 < share < 1 else ""
        return (
            f"{self.desc}: {self.done}/{self.total} {self.unit} ({share:.0%}), "
            f"{elapsed:.0f} s{left}"
        )

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
