"""Progress bars on long work (building pi_0, training, evaluation), and one switch that silences them all.

    with progress.bar(total=n, desc="eval") as bar:   # a tqdm bar; disabled when progress is off
        ...
    with progress.enabled(False):                     # --no-progress: ours and Hugging Face's bars off
        ...

A function that takes ``progress=None`` follows the process-wide switch; ``True`` or ``False`` decides for
that call. The switch is display only, like logging's configuration: it never changes what is computed.
"""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from tqdm import tqdm

_ON = [True]


def is_enabled(progress: bool | None = None) -> bool:
    """Whether to show a bar: ``progress`` if given, else the process-wide switch."""
    return _ON[0] if progress is None else bool(progress)


def bar(progress: bool | None = None, **kwargs) -> "tqdm":
    """A tqdm bar (``total=``, ``desc=``, ...), shown when :func:`is_enabled` (``progress``)."""
    from tqdm.auto import tqdm  # here, not at import: the command line's parser stays light

    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(disable=not is_enabled(progress), **kwargs)


def _hf_switches(on: bool) -> list:
    """Turn the bars of huggingface_hub (light to import; transformers takes its setting from it when imported
    later), and of transformers and datasets where already imported, on or off; returns how to undo it."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    undo = [enable_progress_bars if not are_progress_bars_disabled() else disable_progress_bars]
    (enable_progress_bars if on else disable_progress_bars)()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        was = hf_logging.is_progress_bar_enabled()
        (hf_logging.enable_progress_bar if on else hf_logging.disable_progress_bar)()
        undo.append(hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)
    if "datasets" in sys.modules:
        import datasets

        was = datasets.is_progress_bar_enabled()
        (datasets.enable_progress_bars if on else datasets.disable_progress_bars)()
        undo.append(datasets.enable_progress_bars if was else datasets.disable_progress_bars)
    return undo


@contextlib.contextmanager
def enabled(on: bool) -> Iterator[None]:
    """Show (``on``) or hide every progress bar for the duration: ours, and those of huggingface_hub and
    transformers (e.g. "Loading weights"), imported already or later, and of datasets if imported already."""
    saved_on = _ON[0]
    _ON[0] = bool(on)
    undo = [] if on else _hf_switches(False)  # showing: leave the libraries' own settings alone
    was_tf = "transformers" in sys.modules
    try:
        yield
    finally:
        _ON[0] = saved_on
        if undo and not was_tf and "transformers" in sys.modules:  # imported inside: it copied the hub's setting
            from transformers.utils import logging as hf_logging

            hf_logging.enable_progress_bar()
        for f in reversed(undo):
            f()
