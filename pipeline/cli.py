"""What the three commands share: argument errors, logging set-up and the `error:` line."""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence

from pipeline.errors import PipelineError, UsageError

PROJECT_LOGGER = "pipeline"
MIN_SECRET = 4
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports bad usage as UsageError (one `error:` line, exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see --help)")


class RedactingFormatter(logging.Formatter):
    """Formats as usual, then replaces every known secret value (tracebacks too) by `***`."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__(_FORMAT)
        # A value of a few characters is no secret worth hiding, and replacing it everywhere
        # would garble every line; real keys and passwords are far longer.
        self.secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


def configure_logging(level: str, secrets: Iterable[str] = ()) -> RedactingFormatter:
    """One logging configuration for every command.

    LOG_LEVEL applies to the project's own loggers (`pipeline.*`) only: botocore and urllib3
    print request headers at DEBUG, so third-party loggers stay at WARNING whatever it says.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise UsageError(f"LOG_LEVEL is {level!r}: use DEBUG, INFO, WARNING or ERROR")
    redactor = RedactingFormatter(secrets)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(redactor)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger(PROJECT_LOGGER).setLevel(numeric)
    logging.captureWarnings(True)
    return redactor


def few_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas (M_ARENA_MAX), before the commands start their threads.

    glibc gives each new thread an arena of its own, up to 8 per core, and freed buffers stay
    in them: the 30-odd download, fsync and upload threads of a backfill held ~20 MB of RSS
    more for nothing. Elsewhere than glibc (macOS), nothing to do.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # -8 is M_ARENA_MAX in malloc.h
    except (OSError, AttributeError):
        pass


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Call `main`, turning failures into one `error:` line and the contract's exit status."""
    few_malloc_arenas()
    try:
        return main(argv)
    except PipelineError as exc:
        return _fail(str(exc), exc.exit_code, exc)
    except BrokenPipeError:  # output piped into `head` and closed: not worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return _fail("interrupted; rerun to resume where it stopped", 130, None)
    except Exception as exc:  # noqa: BLE001 - the last line of defence, reported in one line
        return _fail(f"unexpected {type(exc).__name__}: {exc}", 1, exc)


def _fail(message: str, code: int, exc: BaseException | None) -> int:
    project = logging.getLogger(PROJECT_LOGGER)
    redactor = _current_redactor()
    if redactor is not None:
        message = redactor.redact(message)
    if exc is not None and project.isEnabledFor(logging.DEBUG):
        project.debug("traceback of the failure", exc_info=exc)
    print(f"error: {message}", file=sys.stderr)
    return code


def _current_redactor() -> RedactingFormatter | None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, RedactingFormatter):
            return handler.formatter
    return None
