"""Sweeps over SAE features: ablate or patch each of N features (x positions) of one prompt, in batched
runs (``feature_sweep``), and gradient x activation scores with exact top-k (``feature_attribution``).

``feature_sweep`` edits one feature at one position per row, with the SAE's error term (so a
row differs from the plain run only by that feature's edit). The rows run as the examples of a few
batched ``IntervenableModel`` calls (``max_rows`` rows each): the
feature of a row is its ``subspaces`` entry and its position its ``unit_locations`` entry.

May import: models, passes, interventions, graph, inspection, api, zoo and this package.
"""

from __future__ import annotations

import torch

from fxvene.api.configuration import IntervenableConfig, RepresentationConfig
from fxvene.api.intervenable import IntervenableModel
from fxvene.interventions.sae import SAEIntervention
from fxvene.sweeps.core import check_positions, index_list


def _ids(inputs, what):
    ids = inputs.get("input_ids") if isinstance(inputs, dict) else inputs
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"{what}: give one prompt, a dict with input_ids of shape (1, seq)")
    return ids


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
    max_rows=256,
):
    """Last-position logits of ``inputs`` with each feature in ``features`` (default: all) ablated, or
    patched from ``source`` (``edit="patch"``, a prompt of the same length), at each of ``positions``
    (default: all), one (feature, position) per row.

    ``sae``: an ``SAEIntervention`` (``pv.load_sae``); its site is
    its hook name, or ``component`` / ``layer``. ``tokens``: token ids whose logits to keep (default:
    the whole vocabulary). Returns a tensor ``(len(features), len(positions), k)``; equal to a loop
    that splices the SAE (error term on) and edits one feature at one position per forward.
    """
    if not isinstance(sae, SAEIntervention):
        raise TypeError(f"sae must be an SAEIntervention (pv.load_sae), got {type(sae).__name__}")
    if edit not in ("ablate", "patch"):
        raise ValueError(f"edit must be 'ablate' or 'patch', got {edit!r}")
    if (edit == "patch") != (source is not None):
        raise ValueError("source: give a source prompt with edit='patch' (and only then)")
    if not isinstance(max_rows, int) or max_rows < 1:
        raise ValueError(f"max_rows must be a positive int, got {max_rows!r}")
    ids = _ids(inputs, "inputs")
    src = None if source is None else _ids(source, "source")
    if src is not None and src.shape != ids.shape:
        raise ValueError(f"source has shape {tuple(src.shape)}; it must match inputs {tuple(ids.shape)}")
    features = index_list(features, sae.d_sae, "features", f"is not a feature of an SAE with {sae.d_sae}")
    positions = check_positions(positions, ids.shape[1], "positions")
    comp, layer = _site(sae, component, layer)
    rows = [(f, p) for f in features for p in positions]
    out = _run_rows(model, ids, src, sae, comp, layer, rows, edit, tokens, max_rows)
    return out.reshape(len(features), len(positions), -1)


def _site(sae, component, layer):
    comp = component if component is not None else sae.hook_name
    if comp is None:
        raise ValueError("component: this SAE has no hook name; give component= and layer=")
    return comp, layer


def _run_rows(model, ids, src, sae, comp, layer, rows, edit, tokens, max_rows):
    """Last-position logits of ``ids`` for each ``(feature, position)`` row, that feature edited there."""
    saved = (sae.edit, sae.value, sae.features, sae.error)
    sae.set_edit(edit)
    sae.error = True
    try:
        im = IntervenableModel(IntervenableConfig(RepresentationConfig(layer, comp, intervention=sae)), model)
        out = []
        for lo in range(0, len(rows), max_rows):
            chunk = rows[lo : lo + max_rows]
            n = len(chunk)
            locs = [[p] for _, p in chunk]
            kw = {"subspaces": [[[f] for f, _ in chunk]]}
            if src is None:
                kw["unit_locations"] = {"base": [locs]}
                sources = None
            else:
                kw["unit_locations"] = {"sources->base": ([locs], [locs])}
                sources = [{"input_ids": src.expand(n, -1)}]
            with torch.no_grad():
                _, res = im({"input_ids": ids.expand(n, -1)}, sources, **kw)
            logits = res.logits[:, -1]
            out.append(logits if tokens is None else logits[:, torch.as_tensor(tokens)])
    finally:
        sae.set_edit(*saved[:3])
        sae.error = saved[3]
    return torch.cat(out)


def feature_attribution(model, inputs, sae, target, k=10, component=None, layer=0, max_rows=256):
    """Scores every (position, feature) of ``inputs`` by gradient x activation in one backward, then
    ablates the ``k`` largest ``|score|`` exactly ("exact top-k").

    The score of feature ``f`` at position ``p`` is the first-order change of the last position's
    logit of token ``target`` when ``f`` is ablated there: ``-a[p, f] * d logit / d a[p, f]`` (the
    SAE spliced with its error term, detached as in SAELens). Returns a dict: ``scores``
    ``(seq, d_sae)``, ``top`` (the ``k`` ``(position, feature)`` pairs, largest ``|score|`` first),
    ``exact`` (the logit change of ablating each of them, by ``feature_sweep``'s rows) and
    ``clean`` (the logit without edits).
    """
    if not isinstance(sae, SAEIntervention):
        raise TypeError(f"sae must be an SAEIntervention (pv.load_sae), got {type(sae).__name__}")
    if not isinstance(target, int) or isinstance(target, bool):
        raise TypeError(f"target must be a token id (int), got {target!r}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    ids = _ids(inputs, "inputs")
    comp, layer = _site(sae, component, layer)
    saved = (sae.edit, sae.value, sae.features, sae.error, sae.detach_error)
    sae.set_edit(None)
    sae.error, sae.detach_error = True, True
    record = []
    sae.record_features = record
    try:
        im = IntervenableModel(IntervenableConfig(RepresentationConfig(layer, comp, intervention=sae)), model)
        with torch.enable_grad():
            _, res = im({"input_ids": ids})
            clean = res.logits[0, -1, target]
            (grad,) = torch.autograd.grad(clean, record[0])
        acts = record[0].detach()
    finally:
        del sae.record_features
        sae.set_edit(*saved[:3])
        sae.error, sae.detach_error = saved[3], saved[4]
    scores = (-acts * grad)[0]
    k = min(k, scores.numel())
    flat = scores.abs().flatten().topk(k).indices
    top = [(int(i) // sae.d_sae, int(i) % sae.d_sae) for i in flat]
    rows = [(f, p) for p, f in top]
    exact = _run_rows(model, ids, None, sae, comp, layer, rows, "ablate", [target], max_rows)[:, 0] - clean.detach()
    return {"scores": scores, "top": top, "exact": exact, "clean": clean.detach()}
