"""Sweeps over SAE features: ablate or patch each of N features (x positions) of one prompt on the sweep
engine (``feature_sweep``), and gradient x activation scores with exact top-k (``feature_attribution``).

``feature_sweep`` edits one feature at one position per row, with the SAE's error term (so a row
differs from the plain run only by that feature's edit). It runs on the sweep engine of
``fxvene.sweeps.engine`` with the SAE's site as the one sweep site: the layers below the site run
once (the engine's cached base run), and so do the positions before a row's edited one (the causal
prefix, where the model's chunk step graph exports). An SAE acts on each position alone, so the
edited value of row ``(f, p)`` is computed from the cached site value at ``p``:
``decode(a') + (x - decode(a))`` with ``a = encode(x)`` and ``a'`` equal to ``a`` but for feature
``f`` (0, or the source run's activation). The engine then patches that value in, as a patching
sweep patches a source unit: the rows of one feature form one "source example".

May import: models, passes, interventions, graph, inspection, api, zoo and this package.
"""

from __future__ import annotations

import numpy as np
import torch

from fxvene.api.configuration import IntervenableConfig, RepresentationConfig
from fxvene.api.intervenable import IntervenableModel
from fxvene.graph.modes import runs_in_eval_mode
from fxvene.graph.sites import place_component, site_view
from fxvene.interventions.sae import SAEIntervention
from fxvene.sweeps.core import check_positions, engine_for, index_list, token_ids


def _ids(inputs, what):
    ids = inputs.get("input_ids") if isinstance(inputs, dict) else inputs
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"{what}: give one prompt, a dict with input_ids of shape (1, seq)")
    return ids


def _check_sae(sae):
    if not isinstance(sae, SAEIntervention):
        raise TypeError(f"sae must be an SAEIntervention (pv.load_sae), got {type(sae).__name__}")


def _check_rows(max_rows):
    if max_rows is not None and (not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 1):
        raise ValueError(f"max_rows must be a positive int or None, got {max_rows!r}")


@runs_in_eval_mode
def feature_sweep(
    model,
    inputs,
    sae,
    features=None,
    positions=None,
    edit="ablate",
    source=None,
    component=None,
    layer=0,
    tokens=None,
    max_rows=None,
    tracer="auto",
    prefix="auto",
    compile=False,
):
    """Last-position logits of ``inputs`` with each feature in ``features`` (default: all) ablated, or
    patched from ``source`` (``edit="patch"``, a prompt of the same length), at each of ``positions``
    (default: all), one (feature, position) per row.

    ``sae``: an ``SAEIntervention`` (``pv.load_sae``); its site is its hook name, or ``component`` /
    ``layer``. ``tokens``: token ids whose logits to keep (default: the whole vocabulary).
    ``max_rows``: rows per engine call (None: the engine's choice); ``tracer``, ``prefix`` and
    ``compile`` as in ``pv.patching_sweep``. Returns a tensor ``(len(features), len(positions), k)``;
    equal to a loop that splices the SAE (error term on) and edits one feature at one position per
    forward.
    """
    _check_sae(sae)
    if edit not in ("ablate", "patch"):
        raise ValueError(f"edit must be 'ablate' or 'patch', got {edit!r}")
    if (edit == "patch") != (source is not None):
        raise ValueError("source: give a source prompt with edit='patch' (and only then)")
    _check_rows(max_rows)
    ids = _ids(inputs, "inputs")
    src = None if source is None else _ids(source, "source")
    if src is not None and src.shape != ids.shape:
        raise ValueError(f"source has shape {tuple(src.shape)}; it must match inputs {tuple(ids.shape)}")
    features = index_list(features, sae.d_sae, "features", f"is not a feature of an SAE with {sae.d_sae}")
    positions = check_positions(positions, ids.shape[1], "positions")
    rows = [(f, p) for f in features for p in positions]
    out = _run_rows(
        model,
        ids,
        src,
        sae,
        _site(model, sae, component, layer),
        rows,
        token_ids(tokens, model),
        max_rows,
        tracer,
        prefix,
        compile,
    )
    return out.reshape(len(features), len(positions), -1)


def _site(model, sae, component, layer):
    comp = component if component is not None else sae.hook_name
    if comp is None:
        raise ValueError("component: this SAE has no hook name; give component= and layer=")
    return place_component(model, comp, layer)  # a TransformerLens name: the site it means in this family


def _run_rows(model, ids, src, sae, site_key, rows, tok, max_rows, tracer="auto", prefix="auto", compile=False):
    """Last-position logits (or those of ``tok``) of ``ids`` for each ``(feature, position)`` row, that
    feature ablated there (``src`` None) or patched from ``src``, on the sweep engine."""
    eng = engine_for(model, [site_key], tracer, tok is not None, compile, prefix)
    site = eng.sites[0]
    if site.n_heads is not None or (site.fused is not None and site.fused[0] != 1):
        raise ValueError(f"component {site_key[0]!r}: feature sweeps need a whole-vector site, not heads")
    i, node = eng.seg_of_site[0], site.node
    with torch.no_grad(), eng.compiling():
        if src is None:
            b, s = eng.prepare({"input_ids": ids}, tokens=tok), None
        else:
            b, s = eng.prepare_pair({"input_ids": ids}, {"input_ids": src}, tokens=tok)
        full = b["cache"][i][node]
        x = site_view(full, site)[0]
        sae.follow(x)
        acts, ctx = sae.encode_with_context(x.to(sae.W_enc.dtype))
        err = x.to(acts.dtype) - sae.decode_with_context(acts, ctx)
        s_acts = (
            None if s is None else sae.encode_with_context(site_view(s["cache"][i][node], site)[0].to(acts.dtype))[0]
        )
        # one "source example" per feature: its rows' edited values, at their positions
        feats = sorted({f for f, _ in rows})
        slot = {f: u for u, f in enumerate(feats)}
        f_r = torch.tensor([f for f, _ in rows], dtype=torch.long)
        p_r = torch.tensor([p for _, p in rows], dtype=torch.long)
        u_r = torch.tensor([slot[f] for f, _ in rows], dtype=torch.long)
        new = acts[p_r].clone()
        n = torch.arange(len(rows))
        new[n, f_r] = 0 if s_acts is None else s_acts[p_r, f_r]
        vals = sae.decode_with_context(new, tuple(None if c is None else c[p_r] for c in ctx)) + err[p_r]
        values = full.expand((len(feats),) + tuple(full.shape[1:])).clone()
        site_view(values, site)[u_r, p_r] = vals.to(values.dtype)
        cache = [{} for _ in eng.segments]
        cache[i] = {node: values}
        base = dict(b, ids=b["ids"].expand(len(feats), -1), mask=b["mask"].expand(len(feats), -1))
        table = {"sample": u_r.numpy(), "loc": p_r.numpy()[:, None], "head": np.zeros((len(rows), 1), np.int64)}
        return eng.run_rows(base, {"cache": cache}, table, tokens=tok, max_rows=max_rows)


@runs_in_eval_mode
def feature_attribution(model, inputs, sae, target, k=10, component=None, layer=0, max_rows=None):
    """Scores every (position, feature) of ``inputs`` by gradient x activation in one backward, then
    ablates the ``k`` largest ``|score|`` exactly ("exact top-k").

    The score of feature ``f`` at position ``p`` is the first-order change of the last position's
    logit of token ``target`` when ``f`` is ablated there: ``-a[p, f] * d logit / d a[p, f]`` (the
    SAE spliced with its error term). The activations are the leaves of the backward, so the
    score does not depend on ``detach_error``. Returns a dict: ``scores`` ``(seq, d_sae)``, ``top``
    (the ``k`` ``(position, feature)`` pairs, largest ``|score|`` first), ``exact`` (the logit change
    of ablating each of them, by ``feature_sweep``'s rows) and ``clean`` (the logit without edits).
    """
    _check_sae(sae)
    if not isinstance(target, int) or isinstance(target, bool):
        raise TypeError(f"target must be a token id (int), got {target!r}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    _check_rows(max_rows)
    ids = _ids(inputs, "inputs")
    site_key = _site(model, sae, component, layer)
    saved = (sae.edit, sae.value, sae.features, sae.error)
    sae.set_edit(None)
    sae.error = True
    record = []
    sae.record_features = record
    try:
        im = IntervenableModel(
            IntervenableConfig(RepresentationConfig(site_key[1], site_key[0], intervention=sae)), model
        )
        with torch.enable_grad():
            _, res = im({"input_ids": ids})
            clean = res.logits[0, -1, target]
            (grad,) = torch.autograd.grad(clean, record[0])
        acts = record[0].detach()
    finally:
        del sae.record_features
        sae.set_edit(*saved[:3])
        sae.error = saved[3]
    scores = (-acts * grad)[0]
    k = min(k, scores.numel())
    flat = scores.abs().flatten().topk(k).indices
    top = [(int(i) // sae.d_sae, int(i) % sae.d_sae) for i in flat]
    rows = [(f, p) for p, f in top]
    tok = token_ids([target], model)
    exact = _run_rows(model, ids, None, sae, site_key, rows, tok, max_rows)[:, 0] - clean.detach()
    return {"scores": scores, "top": top, "exact": exact, "clean": clean.detach()}
