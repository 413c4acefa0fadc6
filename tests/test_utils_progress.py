"""The progress bar (medi2i.utils.progress.Progress): what it draws, when it logs, and how it
redirects console logging."""

from __future__ import annotations

import logging
import re
import sys

import pytest

from medi2i.utils.progress import Progress

LINE = re.compile(r"^(\d+)/(\d+) pairs \(\d+\.\d s, \d+\.\d pairs/s\)$")


def _logged_counts(caplog, name):
    counts = []
    for record in caplog.records:
        if record.name == name:
            match = LINE.match(record.getMessage())
            assert match, record.getMessage()
            assert record.levelno == logging.INFO
            counts.append(int(match[1]))
    return counts


def test_disabled_bar_writes_nothing(capsys):
    with Progress(5, desc="predict", unit="image", enabled=False) as bar:
        assert bar.disabled
        for _ in bar.iterate(range(5)):
            pass
        bar.update(1, loss_G="0.500")
    assert bar.done == 6
    assert capsys.readouterr() == ("", "")


def test_enabled_bar_draws_unless_terminal_only_off_a_terminal(capsys):
    # Under pytest stderr is captured, not a terminal.
    with Progress(3, desc="predict", unit="image") as bar:
        assert not bar.disabled
        bar.update(2, loss_G="0.500")
        bar.update()
    err = capsys.readouterr().err
    assert "predict" in err and "3/3" in err and "image" in err
    with Progress(3, desc="epoch 1/1", unit="step", terminal_only=True, leave=False) as bar:
        assert bar.disabled
        bar.update(2, loss_G="0.500")
    assert capsys.readouterr() == ("", "")


def test_write_prints_a_line_whether_or_not_the_bar_is_drawn(capsys):
    for enabled in (True, False):
        with Progress(2, enabled=enabled) as bar:
            bar.write(f"summary line {enabled}")
    out = capsys.readouterr().out
    assert "summary line True" in out and "summary line False" in out


@pytest.mark.parametrize(
    ("total", "parts", "expected"),
    [
        (25, 10, [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 25]),  # every 25 // 10 items
        (100, 10, list(range(10, 101, 10))),  # every 10%, the last one once
        (5, 10, [1, 2, 3, 4, 5]),  # fewer items than parts: every item
        (7, 1, [7]),  # only at the end
    ],
)
def test_periodic_log_lines_at_each_part(caplog, total, parts, expected):
    log = logging.getLogger("medi2i.test_progress")
    # Not drawn: the lines are what a run without a terminal gets.
    bar = Progress(total, unit="pair", enabled=False, log=log, log_parts=parts)
    with caplog.at_level(logging.INFO, logger=log.name), bar:
        for _ in range(total):
            bar.update()
    assert _logged_counts(caplog, log.name) == expected


def test_periodic_log_lines_when_updating_by_several(caplog):
    log = logging.getLogger("medi2i.test_progress")
    bar = Progress(20, unit="pair", enabled=False, log=log, log_parts=4)
    with caplog.at_level(logging.INFO, logger=log.name), bar:
        for n in (3, 1, 7, 0, 2, 7):  # 3, 4, 11, 11, 13, 20: crosses 5, 10, 15 and 20
            bar.update(n)
    assert _logged_counts(caplog, log.name) == [11, 20]


def test_no_log_lines_without_a_logger_or_a_total(caplog):
    log = logging.getLogger("medi2i.test_progress")
    with caplog.at_level(logging.INFO):
        with Progress(4, enabled=False) as bar:
            for _ in bar.iterate(range(4)):
                pass
        with Progress(None, enabled=False, log=log) as bar:
            for _ in bar.iterate(range(4)):
                pass
    assert not caplog.records
    with pytest.raises(ValueError, match="log_parts"):
        Progress(4, log=log, log_parts=0)


def test_iterate_counts_finished_items_only():
    with Progress(5, enabled=False) as bar:
        seen = []
        for item in bar.iterate(range(5)):
            assert bar.done == item  # counted when the loop asks for the next one
            seen.append(item)
            if item == 2:
                break
    assert seen == [0, 1, 2] and bar.done == 2
    bar.close()  # a second close does nothing


def test_redirect_logging_while_the_bar_is_drawn(capsys):
    log = logging.getLogger("medi2i.test_progress_redirect")
    handler = logging.StreamHandler(sys.stderr)  # the captured stderr: a console handler
    handler.setFormatter(logging.Formatter("LOG %(message)s"))
    log.addHandler(handler)
    log.propagate = False
    try:
        with Progress(2, enabled=False, redirect_logging=True):
            assert log.handlers == [handler]  # no bar: nothing to redirect
        with Progress(2, desc="predict", redirect_logging=True) as bar:
            assert handler not in log.handlers and len(log.handlers) == 1
            log.warning("file broken")
            bar.update()
        assert log.handlers == [handler]
        err = capsys.readouterr().err
        assert "LOG file broken\n" in err  # same formatter, same stream
    finally:
        log.removeHandler(handler)
        log.propagate = True
