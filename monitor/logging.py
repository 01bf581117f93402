"""structlog setup: JSON lines when the log stream is not a terminal, the console renderer when it
is. Logs go to stderr so that stdout stays clean for data (`once` prints events as JSON lines).
A last processor masks values under secret-looking keys, in case one is ever passed by mistake,
and every renderer gets strings without control or bidirectional-override characters (a value
may be Box's text: an escape sequence or a forged newline must not reach a terminal or a log);
only a traceback keeps its newlines."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from monitor.errors import LeaseLost
from monitor.safe_text import clean_data

_SECRET_KEYS = ("token", "secret", "password", "authorization", "private_key", "passphrase")
#: Values that are text over several lines by nature.
_MULTI_LINE_KEYS = frozenset({"exception", "stack"})


@functools.lru_cache(maxsize=1024)
def _secret_looking(key: str) -> bool:
    """Log keys are few and repeat on every line: each is judged once."""
    lowered = key.lower()
    return any(s in lowered for s in _SECRET_KEYS)


def _mask_secrets(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in event_dict:
        if _secret_looking(key) and event_dict[key] is not None:
            event_dict[key] = "**********"
    return event_dict


def _clean_text(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Strings (in lists and mappings too) without control or bidi characters. Other objects
    are left to the renderer (the console renderer formats `exc_info` itself)."""
    for key, value in event_dict.items():
        event_dict[key] = clean_data(value, multiline=key in _MULTI_LINE_KEYS)
    return event_dict


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    out = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Libraries that log through the standard library (APScheduler, aiohttp) come out in the
    # same format on the same stream, at warning and above.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _mask_secrets,
                _clean_text,
                renderer,
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            _mask_secrets,
            _clean_text,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def log_failure(logger: Any, event: str, **fields: Any) -> None:
    """Log the exception being handled: a lease lost to another replica is an expected turn
    of events (the lease keeper stops the account's work), one warning line without a
    traceback; anything else is an error with its traceback."""
    exc = sys.exc_info()[1]
    if isinstance(exc, LeaseLost):
        logger.warning(event, error=str(exc), **fields)
    else:
        logger.exception(event, **fields)
