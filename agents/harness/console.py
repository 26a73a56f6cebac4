"""What the ``refuel`` command shows on the console: log messages (``--quiet``, ``--verbose``) and progress bars
(``--no-progress``).

Messages go through :mod:`logging` (the ``agents`` and ``refuel_env`` loggers) to stderr, written between
progress bars rather than through them; results (tables, the dry run's configuration) are printed to stdout.

    with console(verbosity=0, progress=True):    # -1: --quiet (warnings and errors), 1: --verbose (debug)
        ...
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator

from ..engine import progress as progress_bars

LOGGERS = ("agents", "refuel_env")


class TqdmHandler(logging.Handler):
    """Writes records to the current ``sys.stderr`` through ``tqdm.write`` (so that progress bars stay intact)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def level_of(verbosity: int) -> int:
    return logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO


@contextlib.contextmanager
def console(verbosity: int = 0, progress: bool = True) -> Iterator[None]:
    """Route the library's log messages to stderr at the level ``verbosity`` asks for, and show or hide every
    progress bar (ours and Hugging Face's), for the duration; restored afterwards."""
    handler = TqdmHandler()
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if verbosity > 0 else "%(message)s"
    handler.setFormatter(logging.Formatter(fmt, "%H:%M:%S"))
    saved = []
    for name in LOGGERS:
        lg = logging.getLogger(name)
        saved.append((lg, lg.level, lg.propagate))
        lg.addHandler(handler)
        lg.setLevel(level_of(verbosity))
        lg.propagate = False
    try:
        with progress_bars.enabled(progress):
            yield
    finally:
        for lg, level, propagate in saved:
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate
