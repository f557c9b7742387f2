"""Train / eval mode of the model a sweep or research method runs on.

An IntervenableModel follows its model's mode (a train-mode model runs train-mode graphs, dropout
live, as pyvene does). Sweeps, causal tracing and the research methods measure effects: they always
run the model in eval mode. ``runs_in_eval_mode`` wraps such an entry point: when its model (the
first argument, or ``model=``) has a module in train mode, it says so once per entry point and
model, runs the call with the whole model in eval mode, and gives every module its own mode back.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
import weakref

_TOLD: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> entry points that warned


def in_train_mode(model):
    """Whether any module of ``model`` is in train mode (False for anything that is not a module)."""
    modules = getattr(model, "modules", None)
    if modules is None:
        return False
    try:
        return any(m.training for m in modules())
    except TypeError:
        return False


@contextlib.contextmanager
def model_mode(model, training):
    """Put the whole ``model`` in train (``training=True``) or eval mode for the block, then give every
    module its own mode back (a user's mix of train and eval modules survives)."""
    modes = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def _tell_once(model, what):
    try:
        told = _TOLD.setdefault(model, set())
    except TypeError:  # a model that cannot be weakly referenced: say it every time
        told = set()
    if what in told:
        return
    told.add(what)
    warnings.warn(
        f"{what} runs the model in eval mode (dropout off); the model was in train mode and is left so. "
        "Call model.eval() first to silence this.",
        UserWarning,
        stacklevel=3,
    )


def runs_in_eval_mode(fn):
    """Decorate a sweep / method entry point whose first argument (or ``model=``) is the model."""
    what = fn.__name__

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        model = args[0] if args else kwargs.get("model")
        if not in_train_mode(model):
            return fn(*args, **kwargs)
        _tell_once(model, what)
        with model_mode(model, False):
            return fn(*args, **kwargs)

    return wrapper


__all__ = ["in_train_mode", "model_mode", "runs_in_eval_mode"]
