"""Forward-hook oracles shared by the family tests (tests/test_families_*.py): read or replace a module's
input or output in the Hugging Face model itself, the reference fxvene's rewritten graphs are checked against.

A hook spec is ``(module path, port, fn)``, port ``"output"`` or ``"input"``; ``fn(tensor)`` returns a
replacement tensor or None (read only). For a module returning a tuple (or list) the first element is the
tensor; an input is the first positional tensor, else the ``hidden_states`` (``input``, ``x``) keyword.
Also :func:`cli_components`, the CLI's component table of a saved model, which the family tests compare with hooks.
"""

import io
import json
from contextlib import contextmanager, redirect_stdout

import torch

_INPUT_KWARGS = ("hidden_states", "input", "x")


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _with_first(out, new):
    return (new, *out[1:]) if isinstance(out, (tuple, list)) else new


def _pre_hook(fn):
    def pre(module, args, kwargs):
        if args and isinstance(args[0], torch.Tensor):
            new = fn(args[0])
            return None if new is None else ((new, *args[1:]), kwargs)
        key = next((k for k in _INPUT_KWARGS if isinstance(kwargs.get(k), torch.Tensor)), None)
        if key is None:
            raise AssertionError(f"{type(module).__name__}: no tensor input to hook")
        new = fn(kwargs[key])
        return None if new is None else (args, {**kwargs, key: new})

    return pre


def _post_hook(fn):
    def post(module, args, out):
        new = fn(_first(out))
        return None if new is None else _with_first(out, new)

    return post


def _register(module, port, fn):
    if port == "output":
        return module.register_forward_hook(_post_hook(fn))
    return module.register_forward_pre_hook(_pre_hook(fn), with_kwargs=True)


@contextmanager
def hooks(model, specs):
    """``model`` with the hooks of ``specs`` registered for the ``with`` block (gradients as the caller has them)."""
    handles = []
    try:
        for path, port, fn in specs:
            handles.append(_register(model.get_submodule(path), port, fn))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def module_hook(module, port, fn):
    """One hook as in :func:`hooks`, on a module object rather than a path."""
    h = _register(module, port, fn)
    try:
        yield
    finally:
        h.remove()


def read(model, module, inputs, port="output"):
    """A detached copy of the tensor at ``module``'s ``port`` in a plain run of ``model`` on ``inputs``."""
    got = {}
    with module_hook(module, port, capture(got, "v")), torch.no_grad():
        model(**inputs)
    return got["v"]


def hooked(model, inputs, specs, **kw):
    """``model(**inputs, use_cache=False)`` under ``torch.no_grad()`` with the hooks of ``specs``."""
    with hooks(model, specs), torch.no_grad():
        return model(**inputs, use_cache=False, **kw)


def capture(store, key=None):
    """A read-only hook fn: a detached copy of the tensor into ``store[key]`` (a dict), or appended to
    ``store`` (a list) when ``key`` is None."""

    def fn(t):
        if key is None:
            store.append(t.detach().clone())
        else:
            store[key] = t.detach().clone()

    return fn


def collect_config(sites):
    """An IntervenableConfig that collects each ``(component, layer)`` of ``sites`` in one forward (unit
    ``h`` for the ``head_*`` components, ``pos`` otherwise)."""
    import fxvene as pv

    return pv.IntervenableConfig(
        representations=[
            pv.RepresentationConfig(
                layer=layer,
                component=c,
                unit="h" if c.startswith("head_") else "pos",
                intervention_type=pv.CollectIntervention,
            )
            for c, layer in sites
        ]
    )


def head_view(t, n_heads):
    """(batch, seq, heads * d) -> (batch, heads, seq, d); a view where ``t`` is contiguous."""
    b, s, w = t.shape
    return t.reshape(b, s, n_heads, w // n_heads).transpose(1, 2)


def cli_components(model, directory, layer):
    """``fxvene components DIRECTORY --layer LAYER --json`` after ``model.save_pretrained(DIRECTORY)`` (the CLI
    loads the directory as a user's code does, SDPA attention included): component -> the CLI's row."""
    from fxvene.cli.app import main

    model.save_pretrained(directory)
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(["components", str(directory), "--layer", str(layer), "--json"])
    assert rc in (0, None)
    return {r["component"]: r for r in json.loads(buf.getvalue())}
