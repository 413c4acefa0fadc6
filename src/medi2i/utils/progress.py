"""The progress bar of every loop that reports its progress (:class:`Progress`).

One :mod:`tqdm` bar (``tqdm.auto``: a text bar in a terminal, a widget in a notebook) with an
ETA when the total is known, and what the package's loops need around it:

* ``enabled=False`` draws nothing (``--no-progress``, non-zero DDP ranks). With
  ``terminal_only`` the bar is also not drawn when its stream is not a terminal (tqdm's own
  test), so that CI logs and redirected output are not flooded with carriage returns.
* ``log=<logger>`` adds an INFO line ``done/total units (elapsed s, rate units/s)`` each time
  another ``1/log_parts`` of the total is done, and at the end. These lines are logged whether
  or not the bar is drawn, so a run without a terminal (a log file) still shows how far it got.
* ``redirect_logging`` sends every console log handler (a stream handler on stdout or stderr,
  of any logger) through :meth:`tqdm.write` while the bar is drawn, so log lines do not break
  the bar; the handlers are put back at :meth:`close`.
* :meth:`write` prints a line above the bar; :meth:`iterate` counts the items of an iterable as
  the loop finishes each one.

Rules: imports only the standard library and tqdm. Postfix values arrive as text: the caller
formats its numbers. A :class:`Progress` is a context manager; :meth:`close` may be called
more than once.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

__all__ = ["Progress"]

T = TypeVar("T")


def _console_loggers() -> list[logging.Logger]:
    """Every logger with a handler that writes to stdout or stderr (the root logger first)."""
    loggers = [logging.root]
    loggers += [
        x for x in logging.root.manager.loggerDict.values() if isinstance(x, logging.Logger)
    ]
    return [
        x
        for x in loggers
        if any(
            isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr)
            for h in x.handlers
        )
    ]


class Progress:
    """A progress bar over ``total`` items, with optional periodic log lines.

    Args:
        total: number of items expected (None: no ETA and no periodic log lines).
        desc: text in front of the bar, e.g. ``"epoch 3/10"``.
        unit: what one item is (``"step"``, ``"image"``); the log lines add an ``s``.
        enabled: False draws no bar (the periodic log lines still come).
        terminal_only: draw the bar only when its stream is a terminal.
        leave: keep the finished bar on screen.
        log: log the periodic INFO lines to this logger (None: no lines).
        log_parts: with ``log``, one line each time another ``total // log_parts`` items (at
            least one) are done, and one when all are.
        redirect_logging: while the bar is drawn, console log lines go through
            :meth:`tqdm.write`.

    Raises:
        ValueError: if ``log_parts < 1``.
    """

    def __init__(
        self,
        total: int | None,
        *,
        desc: str = "",
        unit: str = "it",
        enabled: bool = True,
        terminal_only: bool = False,
        leave: bool = True,
        log: logging.Logger | None = None,
        log_parts: int = 10,
        redirect_logging: bool = False,
    ) -> None:
        if log_parts < 1:
            raise ValueError(f"Progress: log_parts must be >= 1, got {log_parts}")
        self.total = total
        self.unit = unit
        self.done = 0
        self._log = log if total else None
        self._log_every = max(1, total // log_parts) if total else 1
        self._start = time.perf_counter()
        self._closed = False
        self._bar = tqdm(
            total=total,
            desc=desc or None,
            unit=unit,
            leave=leave,
            dynamic_ncols=True,
            disable=True if not enabled else None if terminal_only else False,
        )
        self._redirect = contextlib.ExitStack()
        if redirect_logging and not self.disabled:
            self._redirect.enter_context(
                logging_redirect_tqdm(loggers=_console_loggers(), tqdm_class=tqdm)
            )

    @property
    def disabled(self) -> bool:
        """Whether the bar is not being drawn."""
        return bool(self._bar.disable)

    def update(self, n: int = 1, **postfix: str) -> None:
        """Count ``n`` more items done and, if given, show ``key=value`` texts after the bar.

        Format numbers before passing them (reading device tensors here would wait for the
        device at every step).
        """
        before, self.done = self.done, self.done + n
        if not self.disabled:
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(n)
        if self._log is not None and n > 0:
            every = self._log_every
            if self.done // every > before // every or self.done == self.total:
                elapsed = time.perf_counter() - self._start
                self._log.info(
                    "%d/%d %ss (%.1f s, %.1f %ss/s)",
                    self.done,
                    self.total,
                    self.unit,
                    elapsed,
                    self.done / max(elapsed, 1e-9),
                    self.unit,
                )

    def iterate(self, items: Iterable[T]) -> Iterator[T]:
        """Yield the items, counting each one when the loop asks for the next (as tqdm does).

        An item whose loop body ends in ``break`` or an exception is not counted.
        """
        for item in items:
            yield item
            self.update()

    def write(self, line: str) -> None:
        """Print a line to stdout without breaking the bar (printed even when it is not drawn)."""
        tqdm.write(line)

    def close(self) -> None:
        """Close the bar and put back the log handlers; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            self._bar.close()
        finally:
            self._redirect.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
