"""Path patching (Wang et al. 2022, the IOI paper): a sender's effect along its paths into chosen receivers only.

Senders are heads, whole attention layers or MLPs; receivers are a head's query, key or value
input, a whole head (all three), an MLP's input, or the residual stream into the logits. The
sender's output is taken from the source run; every other path sees the base run. As in
TransformerLens's two-pass recipe, fxvene runs:

1. the base and the source run, exposing every layer's attention output per head (the input of
   the output projection) and, where needed, every MLP output;
2. the *sender* run: the base run with every attention output frozen to its base value except the
   senders' heads, taken from the source (``freeze="heads"``, the IOI paper's choice: MLPs and norms
   are recomputed, so a sender's effect passes through the MLPs between it and a receiver;
   ``freeze="all"`` also freezes the MLPs: direct paths only), cut after the receivers, exposing the
   receivers' inputs;
3. the *receiver* run: the base run with the edges into the receivers rewired to step 2's values
   (passes.path.rewire): only the receivers' chosen units (one head's query columns, ...) change;
   everything downstream of a receiver is recomputed.

Steps 2 and 3 are rewrites of the traced graph, not hooks; ``PathPatchingResult.graph_diff``
shows the receiver run's rewired edges.

Sites are tuples: ``("head", layer, head)``, ``("attn", layer)``, ``("mlp", layer)`` as senders;
``("q" | "k" | "v", layer, head)``, ``("head", layer, head)`` (q, k and v), ``("mlp", layer)`` (its
input) and ``"logits"`` (the residual stream into the final norm and the LM head) as receivers.
Key/value heads are the model's key/value heads (GQA models have fewer).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from fxvene.graph.modes import runs_in_eval_mode
from fxvene.methods.attribution import PerModelCache

SENDER_KINDS = ("head", "attn", "mlp")
RECEIVER_KINDS = ("q", "k", "v", "head", "mlp", "logits")
_QKV = {"q": "head_query_output", "k": "head_key_output", "v": "head_value_output"}


class Splice(nn.Module):
    """``op(x, value)``: ``value`` at the columns ``cols`` of the last dimension (all columns when
    None), ``x`` elsewhere; ``x`` when ``value`` is None."""

    def __init__(self, cols=None, width=None, what=""):
        super().__init__()
        self.what = what
        if cols is None:
            self.mask = None
        else:
            mask = torch.zeros(width, dtype=torch.bool)
            mask[cols] = True
            self.register_buffer("mask", mask, persistent=False)

    def forward(self, x, value=None):
        if value is None:
            return x
        value = value.to(x.dtype)
        if self.mask is None:
            return value.expand_as(x)
        return torch.where(self.mask.to(x.device), value, x)

    def extra_repr(self):
        return self.what


def _head_cols(site, head, width):
    """The last-dim columns of ``head`` in ``site``'s tensor (one q/k/v slot of a fused output or not)."""
    from fxvene.graph.sites import view_columns

    cols = view_columns(site, width)
    dh = len(cols) // site.n_heads
    return cols[head * dh : (head + 1) * dh]


def _third_cols(site, width):
    from fxvene.graph.sites import view_columns

    return view_columns(site, width)


def _as_list(sites):
    """One site (a tuple like ("head", 3, 1), or "logits") or a list of them, as a list."""
    if isinstance(sites, str) or (isinstance(sites, tuple) and sites and isinstance(sites[0], str)):
        return [sites]
    return list(sites)


def _check_site(spec, kinds, what, n_layers, n_heads, n_kv):
    if spec == "logits" and "logits" in kinds:
        return ("logits",)
    if not isinstance(spec, (tuple, list)) or not spec or spec[0] not in kinds:
        raise ValueError(
            f"{what}: {spec!r} is not a site; expected one of "
            + ", ".join(
                "'logits'" if k == "logits" else f"({k!r}, layer{', head' if k in ('q', 'k', 'v', 'head') else ''})"
                for k in kinds
            )
        )
    kind = spec[0]
    need = 3 if kind in ("q", "k", "v", "head") else 2
    if len(spec) != need:
        raise ValueError(f"{what}: {spec!r}: ({kind!r}, layer{', head' if need == 3 else ''}) expected")
    for v in spec[1:]:
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            raise ValueError(f"{what}: {spec!r}: layer and head must be ints")
    layer = int(spec[1])
    if not 0 <= layer < n_layers:
        raise ValueError(f"{what}: {spec!r}: layer {layer} is out of range for a model with {n_layers} layers")
    if need == 3:
        h = int(spec[2])
        top = n_kv if kind in ("k", "v") else n_heads
        if not 0 <= h < top:
            raise ValueError(
                f"{what}: {spec!r}: head {h} is out of range for {top} "
                f"{'key/value ' if kind in ('k', 'v') else ''}heads"
            )
        return (kind, layer, h)
    return (kind, layer)


@dataclass(repr=False)
class PathPatchingResult:
    """``logits``: the last position's logits of the receiver run ``(batch, vocab)``; ``base_logits``
    and ``source_logits`` those of the two plain runs. With a metric: ``value``, ``base_value``,
    ``source_value`` ``(batch, k)`` and ``effect`` (= ``value - base_value``)."""

    logits: torch.Tensor
    base_logits: torch.Tensor
    source_logits: torch.Tensor
    senders: list
    receivers: list
    freeze: str
    value: torch.Tensor | None = None
    base_value: torch.Tensor | None = None
    source_value: torch.Tensor | None = None
    metric: str | None = None
    _graphs: tuple | None = None

    @property
    def effect(self):
        return None if self.value is None else self.value - self.base_value

    def graph_diff(self, which="receivers"):
        """The graph diff of the receiver run (``which="receivers"``: the edges into the receivers
        rewired) or of the sender run (``"senders"``: attention outputs frozen, receivers exposed)
        against the traced graph."""
        from fxvene.inspection.diff import diff

        if which not in ("receivers", "senders"):
            raise ValueError(f"which must be 'receivers' or 'senders', got {which!r}")
        traced, sender_gm, receiver_gm = self._graphs
        gm = receiver_gm if which == "receivers" else sender_gm
        title = (
            f"path patching: receivers {self.receivers} read the sender run"
            if which == "receivers"
            else f"path patching: sender run (senders {self.senders} from the source, other attention frozen)"
        )
        return diff(traced.gm, gm, title=title)

    def __repr__(self):
        lines = [f"PathPatchingResult: senders {self.senders} -> receivers {self.receivers} (freeze={self.freeze!r})"]
        if self.value is not None:
            for i in range(self.value.shape[0]):
                lines.append(
                    f"  example {i}: {self.metric} {self.value[i].tolist()} (base {self.base_value[i].tolist()}, "
                    f"source {self.source_value[i].tolist()})"
                )
        lines.append("  .logits, .value, .effect, .graph_diff()")
        return "\n".join(lines)


_CACHE = PerModelCache()  # receivers -> the plan


def _plan(model, traced, receivers):
    """(collect graph, sender graph, receiver graph, receiver requests) for one call structure."""
    from fxvene.graph.sites import resolve_site
    from fxvene.passes.path import rewire
    from fxvene.passes.rewrite import expose, truncate

    # the graphs depend on the receivers only: which heads and MLPs are senders, and what is frozen, is
    # data (a splice fed no value is the identity)
    hit = _CACHE.get(model, traced, tuple(receivers))
    if hit is not None:
        return hit
    from fxvene.models import family_for

    fam, _ = family_for(model)
    n_layers = int(getattr(model.config, fam.n_layers))
    z = [resolve_site(traced, model, "head_attention_value_output", l) for l in range(n_layers)]
    mlp = [resolve_site(traced, model, "mlp_output", l) for l in range(n_layers)]
    n_out = len(traced.output_keys)
    # step 1: the plain runs, exposing attention and MLP outputs
    collect = expose(traced.gm, [{"node": s.node} for s in z + mlp])
    # step 2: every attention output and every MLP output can be set to a given value
    reqs = []
    for l, s in enumerate(z):
        reqs.append(
            dict(
                name=f"fxv_freeze_attn_{l}",
                module=Splice(what=f"attention L{l}"),
                node=s.node,
                port=s.port,
                region=s.path,
            )
        )
    for l, s in enumerate(mlp):
        reqs.append(
            dict(name=f"fxv_freeze_mlp_{l}", module=Splice(what=f"MLP L{l}"), node=s.node, port=s.port, region=s.path)
        )
    sender_gm = rewire(traced.gm, reqs)
    recv_sites = []
    for r in receivers:
        if r[0] == "logits":
            recv_sites.append((r, resolve_site(traced, model, "block_output", n_layers - 1), None))
        elif r[0] == "mlp":
            recv_sites.append((r, resolve_site(traced, model, "mlp_input", r[1]), None))
        else:
            for kind in ("q", "k", "v") if r[0] == "head" else (r[0],):
                recv_sites.append(((kind,) + r[1:], resolve_site(traced, model, _QKV[kind], r[1]), r[2]))
    nodes = []
    for _, s, _ in recv_sites:
        if s.node not in nodes:
            nodes.append(s.node)
    n0 = len(traced.output_keys)
    sender_gm = truncate(expose(sender_gm, [{"node": n} for n in nodes]), list(range(n0, n0 + len(nodes))))
    # step 3: the edges into the receivers read step 2's values
    rreqs = []
    for i, (r, s, head) in enumerate(recv_sites):
        width = int(s.shape[-1])
        if head is not None:
            cols = _head_cols(s, head, width)
        elif s.split3 is not None:
            cols = _third_cols(s, width)
        else:
            cols = None
        rreqs.append(
            dict(
                name=f"fxv_receiver_{i}",
                module=Splice(cols, width, what=f"receiver {r}"),
                node=s.node,
                port=s.port,
                region=s.path,
                index=nodes.index(s.node),
            )
        )
    receiver_gm = rewire(traced.gm, rreqs)
    return _CACHE.put(model, traced, tuple(receivers), (collect, n_out, z, mlp, sender_gm, receiver_gm, rreqs))


_RUNS = {}


def _plain_run(collect, ids, mask):
    """The plain run of ``ids`` through ``collect`` (logits, attention and MLP outputs). The last few
    runs are kept, keyed by the graph and the ids tensor (identity and in-place version; the mask is
    compared), so that a loop over senders on the same prompts runs them once."""
    key = (id(collect), id(ids), ids._version, tuple(ids.shape))
    hit = _RUNS.get(key)
    if hit is not None and hit[0] is collect and hit[1] is ids and torch.equal(hit[2], mask):
        return hit[3]
    out = collect(input_ids=ids, attention_mask=mask)
    if len(_RUNS) >= 4:
        _RUNS.pop(next(iter(_RUNS)))
    _RUNS[key] = (collect, ids, mask, out)
    return out


@runs_in_eval_mode
def path_patching(model, base, source, senders, receivers, metric=None, tokens=None, freeze="heads", tracer="auto"):
    """Patch ``senders`` (from the ``source`` run) along their paths into ``receivers`` only; every
    other path sees the ``base`` run (module docstring). ``base`` and ``source``: tokenized inputs of
    the same length (a source batch of 1 or the base's). ``freeze``: ``"heads"`` (attention outputs
    frozen in the sender run, MLPs recomputed: TransformerLens / the IOI paper) or ``"all"`` (MLPs
    frozen too: direct paths only). ``metric``/``tokens``: as in ``fxvene.attribution_patching``
    (optional). Returns a ``PathPatchingResult`` (last-position logits of the three runs, the
    metric, and the graph diff of the rewired receivers)."""
    from fxvene.graph.tracing import trace
    from fxvene.methods.attribution import make_metric
    from fxvene.models import family_for
    from fxvene.sweeps.engine import position_pair

    if freeze not in ("heads", "all"):
        raise ValueError(f"freeze must be 'heads' or 'all', got {freeze!r}")
    fam, _ = family_for(model)
    if fam is None:
        raise ValueError(
            f"path_patching needs a model family fxvene knows (GPT-2, Llama, ...); got {type(model).__name__}"
        )
    cfg = model.config
    n_layers = int(getattr(cfg, fam.n_layers))
    n_heads = int(getattr(cfg, "n_head", None) or cfg.num_attention_heads)
    n_kv = int(getattr(cfg, "num_key_value_heads", None) or n_heads)
    senders = _as_list(senders)
    receivers = _as_list(receivers)
    senders = [_check_site(s, SENDER_KINDS, "senders", n_layers, n_heads, n_kv) for s in senders]
    receivers = [_check_site(r, RECEIVER_KINDS, "receivers", n_layers, n_heads, n_kv) for r in receivers]
    if not senders:
        raise ValueError("senders must not be empty")
    if not receivers:
        raise ValueError("receivers must not be empty")
    met = None if metric is None else make_metric(metric, tokens, model)
    if met is None and tokens is not None:
        raise ValueError("tokens: give a metric (metric='logit_diff', 'prob', ...) to read tokens")
    b_ids, b_mask, s_ids, s_mask = position_pair(base, source, "path patching patches")
    traced = trace(model, ("input_ids", "attention_mask"), tracer=tracer)
    collect, n_out, z, mlp, sender_gm, receiver_gm, rreqs = _plan(model, traced, receivers)
    with torch.no_grad():
        b_out = _plain_run(collect, b_ids, b_mask)
        s_out = _plain_run(collect, s_ids, s_mask)
        B = b_ids.shape[0]
        nz = len(z)
        bz, sz = (
            list(b_out[n_out : n_out + nz]),
            [v.expand_as(b) for v, b in zip(s_out[n_out : n_out + nz], b_out[n_out:])],
        )
        bm = list(b_out[n_out + nz :])
        sm = [v.expand_as(b) for v, b in zip(s_out[n_out + nz :], bm)]
        feeds = {"input_ids": b_ids, "attention_mask": b_mask}
        for l, s in enumerate(z):
            val = bz[l]
            width = val.shape[-1]
            cols = [
                c
                for kind, *rest in senders
                if rest[0] == l and kind in ("head", "attn")
                for c in (range(width) if kind == "attn" else _head_cols(s, rest[1], width))
            ]
            if cols:
                mask = torch.zeros(width, dtype=torch.bool, device=val.device)
                mask[list(cols)] = True
                val = torch.where(mask, sz[l], val)
            feeds[f"fxv_freeze_attn_{l}_value"] = val
        for l in range(len(mlp)):
            if ("mlp", l) in senders:
                feeds[f"fxv_freeze_mlp_{l}_value"] = sm[l]
            elif freeze == "all":
                feeds[f"fxv_freeze_mlp_{l}_value"] = bm[l]
        recv_vals = sender_gm(**feeds)
        feeds = {"input_ids": b_ids, "attention_mask": b_mask}
        for req in rreqs:
            feeds[f"{req['name']}_value"] = recv_vals[req["index"]]
        logits = receiver_gm(**feeds)[0][:, -1]
    res = PathPatchingResult(
        logits=logits,
        base_logits=b_out[0][:, -1],
        source_logits=s_out[0][:, -1].expand(B, -1),
        senders=senders,
        receivers=receivers,
        freeze=freeze,
        _graphs=(traced, sender_gm, receiver_gm),
    )
    if met is not None:
        res.metric = met.label
        res.value, res.base_value, res.source_value = met(logits), met(res.base_logits), met(res.source_logits)
    return res


__all__ = ["path_patching", "PathPatchingResult", "Splice", "SENDER_KINDS", "RECEIVER_KINDS"]
