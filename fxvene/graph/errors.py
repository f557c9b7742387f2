"""The graph runtime's errors (a leaf module: tracing and model I/O both raise them), and the two
helpers that keep every fxvene message short (three lines, 300 characters at most): ``clip``
(another library's message, cut to its first line) and ``known`` (the names a bad one could be)."""

import difflib
import re


class TracingError(RuntimeError):
    """Raised when no frontend can trace a model."""


def clip(text, limit=120):
    """The first line of ``text`` (another library's message), without terminal colour codes, at most
    ``limit`` characters."""
    line = re.sub(r"\x1b\[[0-9;]*m", "", str(text)).strip().split("\n", 1)[0].rstrip()
    return line if len(line) <= limit else line[: max(limit - 3, 1)].rstrip() + "..."


def short_path(path, limit=80):
    """``path`` as a message shows it: whole when short, else its last two parts (``.../dir/file``)."""
    path = str(path)
    if len(path) <= limit:
        return path
    parts = path.replace("\\", "/").rstrip("/").split("/")
    tail = "/".join(parts[-2:])
    return ".../" + (tail if len(tail) <= limit - 4 else parts[-1][-(limit - 4) :])


def known(given, names, limit=150):
    """``did you mean 'x'?`` (the close matches of an unknown name ``given``) or, with none,
    ``known: a, b, ... (N in all)``: as many of ``names`` as fit in about ``limit`` characters."""
    names = [str(n) for n in names]
    close = []
    if isinstance(given, str) and given:
        close = difflib.get_close_matches(given, names, n=2, cutoff=0.6)
        close = close or [n for n in names if len(given) >= 3 and n.lower().startswith(given.lower())][:2]
    if close:
        return f"did you mean {' or '.join(map(repr, close))}? ({len(names)} known)"
    shown, size = [], len("known: ")
    for n in names:
        if size + len(n) + 2 > limit - 16 and len(shown) < len(names) - 1:
            return "known: " + ", ".join(shown) + f", ... ({len(names)} in all)"
        shown.append(n)
        size += len(n) + 2
    return "known: " + ", ".join(shown)
