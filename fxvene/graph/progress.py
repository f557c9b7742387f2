"""One-line progress messages on stderr for the slow one-time steps (export, tracing, cache loads).

    with progress("exporting GPT2LMHeadModel with a KV cache (first use; cached for next time)"):
        ...

prints ``fxvene: exporting GPT2LMHeadModel ... done in 12.3 s`` on stderr: the first part once the
step has run for a second (so a long step is never silent and a quick one says nothing), the
rest when it ends. Nested steps print only the
outermost one. Silenced by the environment variable ``FXVENE_QUIET=1`` or
``fxvene.set_verbosity(0)``.
Messages are not warnings: nothing here goes through ``warnings`` or ``logging``.
``quiet_loggers`` keeps the tracers' own log warnings (meant for their developers) away from the user.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from contextlib import contextmanager

_LEVEL = None  # None: from FXVENE_QUIET; else 0 (silent) or 1 (one line per slow step)
_DEPTH = 0


def set_verbosity(level):
    """0 (or False): no progress messages; 1 (or True, the default): one line on stderr per slow
    one-time step. ``None`` goes back to the default (``FXVENE_QUIET=1`` in the environment means 0)."""
    global _LEVEL
    if level is not None and (not isinstance(level, int) or int(level) not in (0, 1)):
        raise ValueError(f"set_verbosity: level must be 0, 1 (or False/True) or None, got {level!r}")
    _LEVEL = None if level is None else int(level)


def verbosity():
    if _LEVEL is not None:
        return _LEVEL
    return 0 if os.environ.get("FXVENE_QUIET", "").strip() not in ("", "0") else 1


@contextmanager
def progress(what, delay=1.0, stream=None):
    """Say ``fxvene: <what>...`` on stderr if the block is still running after ``delay`` seconds
    (quick steps stay silent), then ``done in <t> s`` (or ``failed after <t> s``) when it ends.
    Inner ``progress`` blocks of an outer one stay quiet."""
    global _DEPTH
    show = verbosity() > 0 and _DEPTH == 0
    out = stream if stream is not None else sys.stderr
    t0 = time.perf_counter()
    state = {"said": False, "over": False}
    lock = threading.Lock()

    def say():
        with lock:
            if not state["over"]:
                print(f"fxvene: {what}...", end="", file=out, flush=True)
                state["said"] = True

    timer = None
    if show:
        if delay <= 0:
            say()
        else:
            timer = threading.Timer(delay, say)
            timer.daemon = True
            timer.start()
    _DEPTH += 1
    ok = False
    try:
        yield
        ok = True
    finally:
        _DEPTH -= 1
        if timer is not None:
            timer.cancel()
        with lock:
            state["over"] = True
            if state["said"]:
                dt = time.perf_counter() - t0
                print(f" done in {dt:.1f} s" if ok else f" failed after {dt:.1f} s", file=out, flush=True)


@contextmanager
def quiet_loggers(*names):
    """Raise the named loggers to ERROR for the duration of the block (torch's and HF's tracers and
    torch's export serde log warnings about their own internals that the user cannot act on)."""
    loggers = [logging.getLogger(n) for n in names]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, old):
            lg.setLevel(lv)
