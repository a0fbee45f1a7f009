"""Progress bars and the console log: one helper for every loop, one logging set-up.

Every long loop (training steps, rendering, decoding, feature extraction, evaluation
tasks, corruptions) goes through :func:`bar`:

- on a terminal (``sys.stderr.isatty()``) it is a tqdm bar, and log lines are written
  above the bars (``tqdm.write``), never glued onto a bar's frame;
- otherwise (output redirected to a file or a pipe, CI, a batch job) there are no ``\\r``
  frames and no cursor codes: a plain ``INFO <desc>: n/total (pct) rate`` line at most
  every ``PLAIN_EVERY_S`` seconds through the ``spatialssl.progress`` logger, and a last
  line at the end if one was written before (a loop shorter than that writes nothing);
- with ``--quiet`` or ``--log-level`` above INFO (:func:`setup_logging`), neither.

:func:`setup_logging` is the one logging set-up (used by the CLI): one format
(``LOG_FORMAT``, also the format of every run's ``train.log``) on stderr, the level of
``--log-level``, and ``warnings.warn`` from the library (the data loaders' skipped files)
shown as one ``WARNING`` line in that format instead of Python's two-line warning.

>>> for step in bar(range(3), desc="demo", enabled=False):
...     pass
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
PLAIN_EVERY_S = 30.0  # redirected output: at most one progress line per loop this often

log = logging.getLogger("spatialssl.progress")
_PACKAGE = Path(__file__).resolve().parent
_quiet = False  # set by setup_logging: --quiet or a level above INFO hides progress


def bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
        initial: int = 0, enabled: bool = True, leave: bool = True) -> Any:
    """A progress bar over ``iterable`` (or updated by hand with ``.update(n)``).

    Args:
        iterable: what to iterate over (``None``: call ``update``).
        total: the number of items (default ``len(iterable)`` where it has one).
        desc: what is counted, e.g. ``"features train"``.
        unit: the unit of an item (``"img"``, ``"it"``).
        initial: items done before (a resumed run's step).
        enabled: the caller's switch (``train.progress``, rank 0 only, ...).
        leave: keep a finished terminal bar on screen.

    Returns:
        A tqdm bar on a terminal, else a :class:`PlainProgress`; both iterate, and take
        ``update``, ``set_postfix`` and ``close`` (and work as context managers).
    """
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    show = enabled and not _quiet
    if show and _is_terminal():
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave,
                    dynamic_ncols=True, file=sys.stderr)
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, enabled=show)


def _is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


class PlainProgress:
    """The bar's stand-in where output is not a terminal: periodic plain log lines."""

    def __init__(self, iterable: Iterable | None, total: int | None, desc: str, unit: str, initial: int,
                 enabled: bool, every_s: float | None = None) -> None:
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self._start = initial
        self.enabled = enabled
        self.every_s = PLAIN_EVERY_S if every_s is None else every_s
        self._t0 = self._last = time.perf_counter()
        self._logged_n: int | None = None
        self._postfix = ""
        self._closed = False

    def __iter__(self) -> Iterator:
        assert self.iterable is not None, "PlainProgress: nothing to iterate over (use update)"
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.enabled and time.perf_counter() - self._last >= self.every_s:
            self._line()

    def set_postfix(self, values: dict[str, Any] | None = None, refresh: bool = True, **kw: Any) -> None:
        self._postfix = " ".join(f"{k}={v}" for k, v in {**(values or {}), **kw}.items())

    def close(self) -> None:
        """A last line if a line was written before and some items came after it."""
        if self._closed:
            return
        self._closed = True
        if self.enabled and self._logged_n is not None and self._logged_n != self.n:
            self._line()

    def _line(self) -> None:
        now = time.perf_counter()
        rate = (self.n - self._start) / max(now - self._t0, 1e-9)
        of = f"/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else ""
        log.info("%s: %d%s %s, %.3g %s/s%s", self.desc or "progress", self.n, of, self.unit, rate, self.unit,
                 f" {self._postfix}" if self._postfix else "")
        self._last, self._logged_n = now, self.n


class _Console(logging.Handler):
    """stderr as it is when a record is written (so a replaced ``sys.stderr`` is used),
    through ``tqdm.write`` so that a line never lands on a terminal bar's frame."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 -- logging's own contract: never raise from emit
            self.handleError(record)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """A warning as one log line: ours by its message (it names the file or key), another
    library's with its category and where it was raised."""
    if Path(filename).resolve().is_relative_to(_PACKAGE):
        logging.getLogger("spatialssl").warning("%s", message)
    else:
        logging.getLogger("py.warnings").warning("%s: %s (%s:%d)", category.__name__, message, filename, lineno)


def setup_logging(level: str | int = "INFO", quiet: bool = False) -> None:
    """The console log of the ``spatialssl`` command (calling it again replaces it).

    Args:
        level: ``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR`` (``--log-level``).
        quiet: only warnings and errors, no progress (``-q``/``--quiet``).
    """
    global _quiet
    lvl = logging.WARNING if quiet else (logging.getLevelName(level.upper()) if isinstance(level, str) else level)
    if not isinstance(lvl, int):
        raise ValueError(f"unknown log level {level!r}")
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, _Console)]:
        root.removeHandler(h)
    handler = _Console(level=lvl)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    logging.getLogger("spatialssl").setLevel(lvl)
    _quiet = lvl > logging.INFO
    warnings.showwarning = _show_warning
