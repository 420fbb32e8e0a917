"""Other libraries' chatter, kept down while bliptk drives them: their loggers raised to a level
for the length of a ``with`` block, then put back."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

__all__ = ["no_transformers_bars", "quiet_loggers"]


@contextlib.contextmanager
def quiet_loggers(*names: str, level: int = logging.ERROR) -> Iterator[None]:
    """Raise the loggers ``names`` (``""`` for the root logger) to ``level`` while the block runs."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, previous in zip(loggers, levels, strict=True):
            logger.setLevel(previous)


@contextlib.contextmanager
def no_transformers_bars() -> Iterator[None]:
    """Hide ``transformers``' own progress bars (writing and loading weights) while the block runs."""
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()
