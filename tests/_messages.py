"""Messages a person reads: every error fxvene raises fits in three lines and 300 characters.

A pytest plugin (``pytest_plugins`` in tests/conftest.py). In the test modules of ``CHECKED``
(the bad-input tests), ``pytest.raises`` is wrapped for the duration of each test: every exception
a ``pytest.raises`` catches whose raise site (the innermost traceback frame) is fxvene's own code
(fxvene, fxvene.models, fxvene.passes) must have a message of at most ``MAX_LINES`` lines and
``MAX_CHARS`` characters, else the test fails naming the message. Exceptions raised inside torch,
transformers or pyvene (and only passed on by fxvene) are not fxvene's messages and are not checked.

With ``FXVENE_MESSAGES_LOG=path`` set, a violation is appended to ``path`` (one JSON line:
test, exception type, length, message) instead of failing the test: an audit of every long
message in one run.

tests/test_messages.py checks the checker. The command line's errors are printed, not raised:
tests/test_cli.py checks their length where it reads them (``one_line_error``).
"""

import json
import os

import pytest

MAX_CHARS = 300
MAX_LINES = 3

CHECKED = {
    "test_bad_input",
    "test_families_vl",
    "test_vl_trace",
    "test_errors",
    "test_messages",
    "test_save_load",
    "test_cli",
    "test_sweep",
    "test_generation",
    "test_generate_options",
    "test_generate_shapes",
    "test_attribution",
    "test_path_patching",
    "test_facts",
    "test_causal_model",
    "test_offload",
    "test_rome_noise",
    "test_sae",
    "test_train_alignment",
    "test_families_encdec",
    "test_generate_encdec",
    "test_pipeline",
    "test_families_encoders",
}


def _roots():
    import fxvene
    import fxvene.models
    import fxvene.passes

    return tuple(os.path.dirname(m.__file__) + os.sep for m in (fxvene, fxvene.models, fxvene.passes))


def raised_by_fxvene(exc):
    """True when ``exc`` was raised by fxvene's own code (its innermost traceback frame)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_roots())


def message_problem(exc):
    """What is wrong with ``exc``'s message for a reader (None if nothing): too long or too many lines."""
    msg = str(exc)
    lines = msg.count("\n") + 1
    if len(msg) <= MAX_CHARS and lines <= MAX_LINES:
        return None
    return (
        f"{type(exc).__name__} message of {len(msg)} characters and {lines} lines "
        f"(at most {MAX_CHARS} and {MAX_LINES}): {msg[:400]!r}"
    )


def check_message(exc, where="?"):
    """Fail (or, with ``FXVENE_MESSAGES_LOG``, record) an fxvene exception whose message is too long."""
    if not isinstance(exc, Exception) or not raised_by_fxvene(exc):
        return
    problem = message_problem(exc)
    if problem is None:
        return
    log = os.environ.get("FXVENE_MESSAGES_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"test": where, "type": type(exc).__name__, "len": len(str(exc)), "msg": str(exc)}))
            f.write("\n")
        return
    pytest.fail(f"fxvene raised a message a person cannot read at a glance: {problem}", pytrace=False)


class _Checked:
    """A ``pytest.raises`` context whose caught exception's message is checked on exit."""

    def __init__(self, ctx, where):
        self._ctx, self._where = ctx, where

    def __enter__(self):
        return self._ctx.__enter__()

    def __exit__(self, exc_type, exc, tb):
        __tracebackhide__ = True
        swallowed = self._ctx.__exit__(exc_type, exc, tb)
        if swallowed and exc is not None:
            check_message(exc, self._where)
        return swallowed

    def __getattr__(self, name):  # matches(), excinfo, ...
        return getattr(self._ctx, name)


def checking_raises(raises, where):
    """``raises`` (pytest's) with every caught fxvene message checked."""

    def wrapped(*args, **kwargs):
        __tracebackhide__ = True
        got = raises(*args, **kwargs)
        if isinstance(got, pytest.ExceptionInfo):  # the function form: raises(E, f, *args)
            check_message(got.value, where)
            return got
        return _Checked(got, where)

    wrapped.__wrapped__ = raises
    return wrapped


@pytest.fixture(autouse=True)
def _check_error_messages(request):
    # not monkeypatch: tests call monkeypatch.undo() themselves (test_bad_input's _rejects)
    if request.module.__name__.rpartition(".")[2] not in CHECKED:
        yield
        return
    raises = pytest.raises
    pytest.raises = checking_raises(raises, request.node.nodeid)
    try:
        yield
    finally:
        pytest.raises = raises
