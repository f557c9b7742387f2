"""What the sweeps of one prompt and of a dataset share: the per-model engine cache (:func:`engine_for`), the
checks of layers and positions, the rows of a patching grid, and the causal-trace arguments (streams,
window, noise).
"""

from __future__ import annotations

import numpy as np
import torch

from fxvene.graph.errors import known
from fxvene.models import family_for
from fxvene.sweeps.engine import SweepEngine
from fxvene.sweeps.results import SweepResult

PYVENE_NOISE_LEVEL = 0.13462981581687927
STREAMS = ("block_output", "mlp_activation", "attention_output")


_ENGINES = {}


def engine_for(model, sites, tracer, tokens, compile, prefix="auto"):
    import weakref

    ckey = compile
    if isinstance(compile, dict):
        ckey = tuple(
            sorted((k, v if isinstance(v, (str, int, float, bool, type(None))) else id(v)) for k, v in compile.items())
        )
    key = (id(model), tuple(sites), tracer, tokens, ckey, prefix)
    hit = _ENGINES.get(key)
    if hit is not None and hit[0]() is model:
        return hit[1]
    eng = SweepEngine(model, sites, tracer=tracer, tokens=tokens, compile=compile, prefix=prefix)
    _ENGINES[key] = (weakref.ref(model), eng)
    return eng


def index_list(values, n, what, out_of_range):
    """``values`` (None: all of ``range(n)``; an int or a non-empty list) as a list of ints in
    ``[0, n)``; anything else is a ValueError naming ``what`` (``out_of_range`` ends its message)."""
    if values is None:
        return list(range(n))
    values = [values] if isinstance(values, int) else list(values)
    if not values:
        raise ValueError(f"{what} must not be empty")
    for v in values:
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not 0 <= v < n:
            raise ValueError(f"{what}: {v!r} {out_of_range}")
    return [int(v) for v in values]


def check_positions(positions, seq, what):
    return index_list(positions, seq, what, f"is not a position of a {seq}-token input")


def check_layers(layers, n_layers, what="layers"):
    return index_list(layers, n_layers, what, f"is out of range for a model with {n_layers} layers")


# ------------------------------------------------------------------------------------ patching


def patching_rows(
    eng, base, source, components, layers, positions, heads, tok, readout_tokens, metric, B, sites, max_rows, progress
):
    b, s = eng.prepare_pair(base, source, tokens=tok if readout_tokens else None)
    hs = heads if heads is not None else [0]
    grid = [
        (ci, li, p, h, e)
        for ci in range(len(components))
        for li in range(len(layers))
        for p in positions
        for h in hs
        for e in range(B)
    ]
    n_sites = len(sites)
    loc = np.full((len(grid), n_sites), -1, dtype=np.int64)
    head = np.zeros((len(grid), n_sites), dtype=np.int64)
    sample = np.empty(len(grid), dtype=np.int64)
    for r, (ci, li, p, h, e) in enumerate(grid):
        j = ci * len(layers) + li
        loc[r, j] = p
        head[r, j] = h
        sample[r] = e
    out = eng.run_rows(
        b,
        s,
        {"sample": sample, "loc": loc, "head": head},
        tokens=tok if readout_tokens else None,
        max_rows=max_rows,
        progress=progress,
    )
    base_out = b["final"]
    out, base_out = read_metric(out, tok, metric, readout_tokens), read_metric(base_out, tok, metric, readout_tokens)
    shape = [len(components), len(layers), len(positions)] + ([len(hs)] if heads is not None else []) + [B, -1]
    return SweepResult(
        out.reshape(shape),
        base_out,
        list(components),
        layers,
        positions,
        heads,
        tokens=None if tok is None else tok.tolist(),
        metric=metric,
    )


def token_ids(tokens, model):
    if tokens is None:
        return None
    if isinstance(tokens, int):
        tokens = [tokens]
    t = torch.as_tensor(list(tokens), dtype=torch.long)
    V = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else None
    if t.dim() != 1 or len(t) == 0:
        raise ValueError(f"tokens must be a non-empty list of token ids, got {tokens!r}")
    if V is not None and (int(t.max()) >= V or int(t.min()) < 0):
        raise ValueError(f"tokens: ids must be in [0, {V}), got {tokens!r}")
    return t


def read_metric(logits, tok, metric, already_selected):
    if metric == "prob":
        p = torch.softmax(logits.float(), -1)
        return p if tok is None else p[:, tok]
    if tok is not None and not already_selected:
        return logits[:, tok]
    return logits


# ------------------------------------------------------------------------------------ causal tracing


def window_layers(layer, window, n_layers):
    """ROME's (and pyvene's tutorial's) window: ``[max(0, l - w//2), min(L, l - (-w//2)))``."""
    return list(range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2))))


def trace_noise(n_samples, n_subject, dim, seed=1):
    """Noise ``(n_samples, n_subject, dim)`` float64: ``RandomState(seed).randn`` in C order, so
    sample 0 with 4 subject tokens and seed 1 is pyvene's NoiseIntervention noise."""
    return torch.from_numpy(np.random.RandomState(seed).randn(n_samples, n_subject, dim))


def check_trace_args(model, streams, window, n_samples):
    """``(family, streams as a list)`` for a causal trace, or the ValueError naming the bad argument."""
    if isinstance(streams, str):
        streams = (streams,)
    streams = list(streams)
    if not streams:
        raise ValueError("streams must not be empty")
    fam, _ = family_for(model)
    if fam is None:
        raise ValueError(f"causal_trace needs a model family fxvene knows; got {type(model).__name__}")
    for st in streams:
        if st not in fam.components:
            raise ValueError(f"streams: unknown component {st!r}; {known(st, sorted(fam.components))}")
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    return fam, streams
