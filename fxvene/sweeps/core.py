"""What the sweeps of one prompt and of a dataset share: the per-model engine cache (``engine_for``), the
checks of layers and positions, the rows of a patching grid, and the causal-trace arguments (streams,
window, noise).
"""

from __future__ import annotations

import numpy as np
import torch

from fxvene.graph.errors import known
from fxvene.models import family_for
from fxvene.models.defaults import TRACE_STREAMS, trace_streams
from fxvene.sweeps.engine import SweepEngine
from fxvene.sweeps.results import SweepResult

PYVENE_NOISE_LEVEL = 0.13462981581687927
STREAMS = TRACE_STREAMS  # ROME's three panels as pyvene names them; each family runs what it has (trace_streams)


_ENGINES = {}


def engine_for(model, sites, tracer, tokens, compile, prefix="auto", position=-1, seq=None, images=False):
    """The sweep engine of ``model`` for these sites and options, built once and reused. ``seq``: the
    call's length, for a model whose graph is traced per length (ESM's rotary tables on transformers 4).
    ``images``: the graph takes ``pixel_values`` too (LLaVA, ``SweepEngine``)."""
    import weakref

    ckey = compile
    if isinstance(compile, dict):
        ckey = tuple(
            sorted((k, v if isinstance(v, (str, int, float, bool, type(None))) else id(v)) for k, v in compile.items())
        )
    key = (id(model), tuple(sites), tracer, tokens, ckey, prefix, position) + (("images",) if images else ())
    steps = None
    for _ in range(2):
        hit = _ENGINES.get(key)
        if hit is not None and hit[0]() is model:
            eng = hit[1]
        else:
            make = getattr(model, "fxvene_sweep_engine", None) or SweepEngine  # pipeline stages: their own
            eng = make(
                model,
                sites,
                tracer=tracer,
                tokens=tokens,
                compile=compile,
                prefix=prefix,
                position=position,
                steps=steps,
                **({"images": True} if images else {}),
            )
            _ENGINES[key] = (weakref.ref(model), eng)
        fixed = eng.traced.meta.get("steps")
        if seq is None or fixed is None or fixed == seq:
            return eng
        steps, key = int(seq), key + (int(seq),)  # a graph of another length: the engine of this one
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
    if tuple(streams) == STREAMS:  # the default panels: those the family has (MoE: the block's mlp_output)
        streams = list(trace_streams(fam.components))
    for st in streams:
        if st not in fam.components:
            raise ValueError(f"streams: unknown component {st!r}; {known(st, sorted(fam.components))}")
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    return fam, streams


# ------------------------------------------------------------------------------------ ROME's noise kinds

NOISE_SPELLINGS = "a number, None, 's<k>', 'subjects', 'm', 't<d>' or 'u<x>'"


def parse_noise(noise_level):
    """``(kind, number)`` of a ``noise_level`` spelling (ROME's ``--noise_level`` and fxvene's own):
    ``None`` -> ``("default", 3.0)``; a number x -> ``("float", x)``; ``"s<k>"`` (``"s"``: k = 1) ->
    ``("s", k)``; ``"subjects"`` -> ``("subjects", 3.0)``; ``"m"`` -> ``("m", None)``; ``"t<d>"`` ->
    ``("t", d)`` (d > 2); ``"u<x>"`` -> ``("u", x)``. Anything else is a ValueError."""
    bad = f"noise_level must be {NOISE_SPELLINGS}, got {noise_level!r}"
    if noise_level is None:
        return "default", 3.0
    if isinstance(noise_level, bool):
        raise ValueError(bad)
    if isinstance(noise_level, (int, float, np.integer, np.floating)):
        x = float(noise_level)
        if not np.isfinite(x) or x < 0:
            raise ValueError(f"noise_level: a number must be finite and >= 0, got {noise_level!r}")
        return "float", x
    if not isinstance(noise_level, str):
        raise ValueError(bad)
    s = noise_level.strip()
    try:  # a number written out ("0.5", as on the command line)
        return parse_noise(float(s))
    except ValueError:
        pass
    if s == "subjects":
        return "subjects", 3.0
    if s == "m":
        return "m", None
    if s and s[0] in "stu":
        try:
            x = float(s[1:]) if len(s) > 1 else (1.0 if s == "s" else None)
        except ValueError:
            x = None
        if x is None or not np.isfinite(x) or x < 0 or (s[0] == "t" and x <= 2):
            what = {"s": "k >= 0 (k x the std)", "t": "degrees d > 2", "u": "half-width x >= 0"}[s[0]]
            raise ValueError(f"noise_level {noise_level!r}: '{s[0]}<number>' needs {what}")
        return s[0], x
    raise ValueError(bad)


def embedding_outputs(model, id_lists):
    """The input embedding layer's outputs for each list of token ids, concatenated: ``(tokens, dim)``
    float64 (the rows ROME's ``"embed"`` layer gives)."""
    emb = model.get_input_embeddings()
    dev = emb.weight.device
    with torch.no_grad():
        rows = [emb(torch.as_tensor(list(ids), dtype=torch.long, device=dev)) for ids in id_lists if len(ids)]
    if not rows:
        return torch.zeros(0, emb.weight.shape[1], dtype=torch.float64)
    return torch.cat(rows).double().cpu()


def embedding_std(model, texts, tokenizer=None):
    """The standard deviation of every element of the input embeddings of each text (or list of token
    ids) tokenized on its own (``tokenizer(text)["input_ids"]``, special tokens as the tokenizer adds
    them), pooled: ROME's ``s<k>`` noise is ``k`` times this over the subjects."""
    ids = token_lists(texts, tokenizer, "texts")
    x = embedding_outputs(model, ids)
    if x.numel() < 2:
        raise ValueError("texts: the embedding std needs at least one token (two numbers), got none")
    return float(x.std())


def token_lists(texts, tokenizer, what):
    """Each text as ``tokenizer(text)["input_ids"]``; lists of ints pass as they are."""
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise ValueError(f"{what} must be a list of strings or of token-id lists, got {type(texts).__name__}")
    out = []
    for t in texts:
        if isinstance(t, str):
            if tokenizer is None:
                raise ValueError(f"{what}: text needs the model's tokenizer (tokenizer=...), or give token ids")
            out.append(list(tokenizer(t)["input_ids"]))
        elif isinstance(t, (list, tuple)) and all(isinstance(i, (int, np.integer)) for i in t):
            out.append([int(i) for i in t])
        else:
            raise ValueError(f"{what}: each item must be a string or a list of token ids, got {t!r}")
    return out


def embedding_gaussian(model, id_lists):
    """``(mean, weight)`` of the multivariate Gaussian fitted to the embedding outputs of ``id_lists``
    (every token one sample; mean and sample covariance with n - 1): a standard normal row ``z`` maps to
    ``z @ weight + mean``, ``weight = sqrt(S)[:, None] * Vh`` from the SVD ``cov = U S Vh``."""
    x = embedding_outputs(model, id_lists)
    if x.shape[0] < 2:
        raise ValueError(f"noise_corpus: the Gaussian 'm' needs at least 2 tokens, got {x.shape[0]}")
    mean = x.mean(0)
    c = x - mean
    cov = c.T @ c / (x.shape[0] - 1)
    _, s, vh = torch.linalg.svd(cov)
    return mean, s.clamp(min=0).sqrt()[:, None] * vh


class TraceNoise:
    """The noise a causal trace puts on the subject: its kind (``gauss``, ``uniform``, ``mvn``,
    ``student``), its parameters, and whether it replaces the subject's embeddings (``replace``) or is
    added to them. ``level`` is what results show as ``noise_level``: the Gaussian's std, else the
    spelling (``"u0.5"``, ``"m"``, ``"t3"``)."""

    def __init__(self, kind, scale=None, mean=None, weight=None, degrees=None, replace=False, spelling=None):
        self.kind, self.scale, self.mean, self.weight = kind, scale, mean, weight
        self.degrees, self.replace, self.spelling = degrees, bool(replace), spelling

    @property
    def level(self):
        return float(self.scale) if self.kind == "gauss" else str(self.spelling)

    def draw(self, n_samples, n_subject, dim, seed):
        """``(n_samples, n_subject, dim)`` float64: the noise of each sample and subject token."""
        if self.kind == "uniform":
            u = np.random.RandomState(seed).uniform(-1, 1, (n_samples, n_subject, dim))
            return torch.from_numpy(u) * self.scale
        z = trace_noise(n_samples, n_subject, dim, seed)
        if self.kind == "gauss":
            return z * self.scale
        g = z @ self.weight + self.mean
        if self.kind == "student":
            u = np.random.RandomState(2).chisquare(self.degrees, size=n_samples * n_subject)
            g = g * torch.from_numpy(np.sqrt((self.degrees - 2) / u)).reshape(n_samples, n_subject, 1)
        return g

    def apply(self, part, noise, embedded):
        """``part`` (float64, the subject's rows of block 0's input) with the noise added, or with the
        token embeddings ``embedded`` swapped for it (``replace``)."""
        return part - embedded + noise if self.replace else part + noise


def resolve_noise(
    model, noise_level, replace=False, subjects=None, prompt_subjects=None, corpus=None, corpus_given=False
):
    """A ``TraceNoise`` from a ``noise_level`` spelling (``parse_noise``). The callables give,
    when the spelling needs them: ``subjects()`` the token ids of each subject on its own (``s<k>``),
    ``prompt_subjects()`` the subject tokens of the traced prompts (``"subjects"``), ``corpus()`` the
    token-id lists the Gaussian is fitted to (``m``, ``t<d>``; ``corpus_given``: the user gave them)."""
    if not isinstance(replace, bool):
        raise ValueError(f"replace must be True or False, got {replace!r}")
    kind, x = parse_noise(noise_level)
    if corpus_given and kind not in ("m", "t"):
        raise ValueError(f"noise_corpus: only noise_level 'm' and 't<d>' fit a Gaussian to it, not {noise_level!r}")
    emb = model.get_input_embeddings().weight.detach()
    spelling = noise_level
    if kind == "default":
        return TraceNoise("gauss", 3 * float(emb.float().std()), replace=replace, spelling=spelling)
    if kind == "float":
        return TraceNoise("gauss", x, replace=replace, spelling=spelling)
    if kind == "subjects":  # fxvene's own: 3 x the std of the prompts' subject token rows (float32, as ever)
        toks = torch.tensor([t for ids in prompt_subjects() for t in ids], dtype=torch.long, device=emb.device)
        scale = 3 * float(emb[toks].float().std()) if len(toks) else 0.0  # no subject: nothing is traced
        return TraceNoise("gauss", scale, replace=replace, spelling=spelling)
    if kind == "s":
        vals = embedding_outputs(model, subjects())
        if vals.numel() < 2:
            raise ValueError(f"noise_level {noise_level!r}: no subject tokens to take the std of")
        return TraceNoise("gauss", x * float(vals.std()), replace=replace, spelling=spelling)
    if kind == "u":
        return TraceNoise("uniform", x, replace=replace, spelling=f"u{x:g}")
    mean, weight = embedding_gaussian(model, corpus())
    if kind == "m":
        return TraceNoise("mvn", mean=mean, weight=weight, replace=replace, spelling="m")
    return TraceNoise("student", mean=mean, weight=weight, degrees=x, replace=replace, spelling=f"t{x:g}")
