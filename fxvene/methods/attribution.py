"""Attribution patching: a first-order estimate of every sweep cell from one backward pass.

For a patching grid (components x layers x positions (x heads)), the exact sweep runs the base
prompt once per cell with that cell's unit taken from the source run. Attribution patching
(Nanda 2023; Syed et al. 2023) estimates all cells at once::

    metric(patched cell) - metric(base)  ~=  (a_source - a_base) . d metric / d a      (at the base run)

fxvene builds this as a rewrite of the traced graph, not as hooks: at every site of the grid
the rewrite inserts an *interpolation* op ``x + alpha * (src - x)`` with one ``alpha`` per unit
(position, or head and position) fed as a graph input, zero by default. At ``alpha = 0`` the graph
computes the base run exactly, and ``d metric / d alpha`` of a unit is the first-order estimate of
patching that unit: one source forward (a truncated graph exposing the sites), one base forward
and one backward give every cell. ``exact_top_k=k`` then re-runs the ``k`` cells with the largest
estimated change exactly, as rows of the batched sweep engine (``fxvene.sweeps.engine``).

The metric is read at the last position, as in ``fxvene.patching_sweep``: ``"logit_diff"``
(``tokens=[a, b]``: logit a - logit b), ``"logit"``, ``"prob"``, ``"logprob"`` (one column per
token of ``tokens``), or a callable ``f(logits (batch, vocab)) -> (batch,)`` or ``(batch, k)``
(differentiable). The result is a ``AttributionResult``, a ``SweepResult`` whose
``values`` are the *estimated* patched metric (``base + estimate``) and whose ``exact`` tensor holds
the exact values of the re-run cells (NaN elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from fxvene.graph.errors import known
from fxvene.graph.modes import runs_in_eval_mode
from fxvene.sweeps.results import SweepResult, span

METRICS = ("logit_diff", "logit", "prob", "logprob")


# ------------------------------------------------------------------------------------ metrics


@dataclass(frozen=True)
class Metric:
    """A metric of the last position's logits: ``fn(logits (b, V)) -> (b, k)``; ``readout``: the
    token ids an exact run must read (None: the whole vocabulary); ``tokens``: the token of each
    column (None when the columns are not tokens); ``label``: how results name it."""

    fn: object
    readout: list | None
    tokens: list | None
    label: str

    def __call__(self, logits, readout_columns=False):
        """The metric of ``logits``: ``(b, V)``, or ``(b, len(readout))`` when ``readout_columns``."""
        if readout_columns:
            full = logits.new_zeros((logits.shape[0], max(self.readout) + 1))
            full[:, self.readout] = logits
            logits = full
        out = self.fn(logits)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"metric: the callable must return a tensor, got {type(out).__name__}")
        if out.dim() == 1:
            out = out[:, None]
        if out.dim() != 2 or out.shape[0] != logits.shape[0]:
            raise ValueError(
                f"metric: the callable must return (batch,) or (batch, k) values, got shape "
                f"{tuple(out.shape)} for a batch of {logits.shape[0]}"
            )
        return out


def make_metric(metric, tokens, model):
    """A ``Metric`` from ``metric`` (a name in ``METRICS`` or a callable) and ``tokens``."""
    V = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else None
    if callable(metric) and not isinstance(metric, str):
        if tokens is not None:
            raise ValueError("tokens: a callable metric reads the logits itself; give tokens=None")
        return Metric(metric, None, None, getattr(metric, "__name__", "metric"))
    if metric not in METRICS:
        raise ValueError(
            f"metric must be one of {', '.join(METRICS)} or a callable of the last position's logits, got {metric!r}"
        )
    if tokens is None:
        raise ValueError(f"tokens: metric={metric!r} needs token ids (tokens=[id, ...])")
    toks = [tokens] if isinstance(tokens, (int, np.integer)) else list(tokens)
    for t in toks:
        if not isinstance(t, (int, np.integer)) or isinstance(t, bool) or (V is not None and not 0 <= int(t) < V):
            raise ValueError(f"tokens: {t!r} is not a token id in [0, {V})")
    toks = [int(t) for t in toks]
    if metric == "logit_diff":
        if len(toks) != 2:
            raise ValueError(
                f"tokens: metric='logit_diff' takes two token ids [a, b] (logit a - logit b), got {tokens!r}"
            )
        a, b = toks
        return Metric(lambda lg: (lg[:, a] - lg[:, b])[:, None], toks, None, f"logit({a}) - logit({b})")
    if metric == "logit":
        return Metric(lambda lg: lg[:, toks], toks, toks, "logit")
    if metric == "prob":
        return Metric(
            lambda lg: torch.softmax(lg.double() if lg.dtype == torch.float64 else lg.float(), -1)[:, toks],
            None,
            toks,
            "prob",
        )
    return Metric(
        lambda lg: torch.log_softmax(lg.double() if lg.dtype == torch.float64 else lg.float(), -1)[:, toks],
        None,
        toks,
        "logprob",
    )


# ------------------------------------------------------------------------------------ the rewrite


class Interpolate(nn.Module):
    """``op(x, src, alpha)``: ``x + alpha * (src - x)`` per unit of a site (``alpha``: ``(b, s)`` for
    position units, ``(b, heads, s)`` for head units); the identity when ``alpha`` is None."""

    def __init__(self, site):
        super().__init__()
        self.site = site

    def forward(self, x, src=None, alpha=None):
        from fxvene.graph.sites import scatter, site_view

        if alpha is None or src is None:
            return x
        diff = src.to(x.dtype) - x
        site = self.site
        if site.n_heads is None and site.split3 is None:
            return x + alpha.to(x.dtype)[..., None] * diff
        step = alpha.to(x.dtype)[..., None] * site_view(diff, site)
        return x + scatter(torch.zeros_like(x), site, "h.pos" if site.n_heads is not None else "pos", None, step)


def interpolation_graph(traced, sites):
    """The traced graph with an ``Interpolate`` op at every site (inputs ``fxv_src_j``,
    ``fxv_alpha_j``): at ``alpha = 0`` it is the base run."""
    from fxvene.passes.rewrite import insert_interventions

    reqs = [
        dict(
            name=f"fxv_interp_{j}",
            module=Interpolate(s),
            node=s.node,
            port=s.port,
            region=s.path,
            inputs=[f"fxv_src_{j}", f"fxv_alpha_{j}"],
        )
        for j, s in enumerate(sites)
    ]
    return insert_interventions(traced.gm, reqs)


def source_graph(traced, sites):
    """The traced graph cut down to the site values (exposed as outputs, nothing after them run)."""
    from fxvene.passes.rewrite import expose, truncate

    n_out = len(traced.output_keys)
    gm = expose(traced.gm, [{"node": s.node} for s in sites])
    return truncate(gm, list(range(n_out, n_out + len(sites))))


class PerModelCache:
    """Graphs built for one model's traced graph, by key: an entry serves only while its model is alive
    and its traced graph is the same object (a re-trace builds again); cleared past ``size`` entries.
    Shared by attribution and path patching (``fxvene.methods.path_patching``)."""

    def __init__(self, size=32):
        self._entries, self.size = {}, size

    def get(self, model, traced, key):
        hit = self._entries.get((id(model), traced.frontend, key))
        if hit is not None and hit[0]() is model and hit[1] is traced.gm:
            return hit[2]
        return None

    def put(self, model, traced, key, value):
        import weakref

        if len(self._entries) > self.size:
            self._entries.clear()
        self._entries[(id(model), traced.frontend, key)] = (weakref.ref(model), traced.gm, value)
        return value


_GRAPHS = PerModelCache()


def _graphs(model, traced, keys):
    """(sites, source graph, interpolation graph) of a grid, built once per (model, frontend, grid)."""
    from fxvene.graph.sites import resolve_site

    hit = _GRAPHS.get(model, traced, tuple(keys))
    if hit is not None:
        return hit
    sites = [resolve_site(traced, model, c, l) for c, l in keys]
    return _GRAPHS.put(
        model, traced, tuple(keys), (sites, source_graph(traced, sites), interpolation_graph(traced, sites))
    )


# ------------------------------------------------------------------------------------ the result


@dataclass(repr=False)
class AttributionResult(SweepResult):
    """A ``SweepResult`` of *estimates*: ``values[component, layer, position, (head,)
    example, k]`` is ``base + (a_source - a_base) . grad`` for metric column ``k``; ``effects`` the
    estimated changes. ``exact``: the same shape, the exact patched metric of the cells re-run with
    ``exact_top_k`` (NaN elsewhere); ``forwards``: what the estimate cost (forwards, backwards)."""

    exact: torch.Tensor | None = None
    forwards: dict | None = None

    @property
    def exact_effects(self):
        """``exact - base`` (NaN where a cell was not re-run)."""
        return None if self.exact is None else self.exact - self.base

    def _record(self, index):
        rec = super()._record(index)
        rec["estimate"] = rec.pop("effect")
        rec["value"] = rec["base"] + rec["estimate"]
        if "token" in rec and self.tokens is None:
            rec.pop("token")
            rec["column"] = int(index[-1])
        if self.exact is not None:
            ex = float(self.exact[tuple(int(i) for i in index)])
            if ex == ex:  # not NaN
                rec["exact"] = ex
                rec["exact_effect"] = ex - rec["base"]
        return rec

    def top(self, k=5, by="abs_effect"):
        """The ``k`` cells with the largest estimated change (``by="abs_effect"``, either way;
        ``"effect"``: the largest increase; ``"value"``), as records ``{component, layer, position,
        (head,) example, token | column, value, base, estimate, (exact, exact_effect)}``."""
        return super().top(k, by=by)

    def exact_cells(self):
        """Records of the cells re-run exactly (``exact_top_k``), largest estimated change first."""
        if self.exact is None:
            return []
        idx = torch.nonzero(~torch.isnan(self.exact)).tolist()
        recs = [self._record(i) for i in idx]
        return sorted(recs, key=lambda r: -abs(r["estimate"]))

    def __repr__(self):
        shape = " x ".join(f"{n} {a}{'s' if n != 1 else ''}" for n, a in zip(self.values.shape, self.axes))
        what = self.metric if self.tokens is None else f"{self.metric} of tokens {self.tokens}"
        lines = [
            f"AttributionResult: first-order estimates of patching, last-position {what}",
            f"  values [{shape}] (base + estimate)",
            f"  components {', '.join(self.components)}; layers {span(self.layers)}; positions "
            f"{span(self.positions)}" + (f"; heads {span(self.heads)}" if self.heads is not None else ""),
        ]
        if self.forwards:
            lines.append(
                f"  cost: {self.forwards['forwards']} forwards + {self.forwards['backwards']} backward(s)"
                + (f"; exact re-run of {self.forwards['exact_rows']} cells" if self.forwards.get("exact_rows") else "")
            )
        if self.values.numel():
            lines.append("  largest estimated changes:")
            for r in self.top(3):
                head = f" head {r['head']}" if "head" in r else ""
                ex = f", exact {r['exact_effect']:+.4g}" if "exact" in r else ""
                lines.append(
                    f"    {r['component']} layer {r['layer']} position {r['position']}{head}, example "
                    f"{r['example']}: {r['estimate']:+.4g}{ex} (base {r['base']:.4g})"
                )
        lines.append("  .top(k), .exact_cells(), .values, .effects, .exact")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ the method


@runs_in_eval_mode
def attribution_patching(
    model,
    base,
    source,
    components=("block_output",),
    metric="logit_diff",
    tokens=None,
    layers=None,
    positions=None,
    heads=None,
    exact_top_k=None,
    tracer="auto",
    max_rows=None,
    progress=None,
    prefix="auto",
):
    """First-order estimates of activation patching at every component x layer x position (x head)
    cell: ``(a_source - a_base) . d metric / d a`` at the base run, from one forward of each input
    and one backward per metric column (see the module docstring for how the graph is rewritten).

    Same grid and conventions as ``fxvene.patching_sweep`` (position p of the source into
    position p of the base; same-length prompts; a source batch of 1 or the base's). ``metric``:
    ``"logit_diff"`` with ``tokens=[a, b]``, ``"logit"``/``"prob"``/``"logprob"`` with ``tokens``
    (one column per token), or a callable of the last position's logits ``(batch, vocab)``.
    ``exact_top_k``: re-run the ``k`` cells with the largest estimated change (either way) exactly
    with the batched sweep engine; their values land in ``result.exact`` (``prefix``, ``max_rows``,
    ``progress``: as in ``fxvene.patching_sweep``, for that re-run). Returns an ``AttributionResult``.
    """
    from fxvene.graph.tracing import trace
    from fxvene.models import family_for
    from fxvene.sweeps.core import check_layers, check_positions
    from fxvene.sweeps.engine import position_pair

    if isinstance(components, str):
        components = (components,)
    components = list(components)
    if not components:
        raise ValueError("components must not be empty")
    met = make_metric(metric, tokens, model)
    b_ids, b_mask, s_ids, s_mask = position_pair(base, source, "attribution patching estimates patching")
    if exact_top_k is not None and (
        not isinstance(exact_top_k, (int, np.integer)) or isinstance(exact_top_k, bool) or exact_top_k < 1
    ):
        raise ValueError(f"exact_top_k must be a positive int or None, got {exact_top_k!r}")
    fam, _ = family_for(model)
    if fam is None:
        raise ValueError(
            f"attribution_patching needs a model family fxvene knows (GPT-2, Llama, ...); got {type(model).__name__}"
        )
    for c in components:
        if c not in fam.components:
            raise ValueError(f"components: unknown component {c!r}; {known(c, sorted(fam.components))}")
        if c == "attention_weight":
            raise ValueError(
                "components: 'attention_weight' has no position units (it is (batch, heads, query, key)); "
                "attribution patching takes position or head components"
            )
    n_layers = int(getattr(model.config, fam.n_layers))
    layers = check_layers(layers, n_layers)
    seq = b_ids.shape[1]
    positions = check_positions(positions, seq, "positions")
    traced = trace(model, ("input_ids", "attention_mask"), tracer=tracer)
    keys = [(c, l) for c in components for l in layers]
    sites, src_gm, interp_gm = _graphs(model, traced, keys)
    is_head = [s.n_heads is not None for s in sites]
    if any(is_head) and not all(is_head):
        raise ValueError("components: mix head components (head_*) and whole components in separate calls")
    if all(is_head):
        nh = sites[0].n_heads
        heads = list(range(nh)) if heads is None else ([heads] if isinstance(heads, int) else list(heads))
        for h in heads:
            if not isinstance(h, (int, np.integer)) or isinstance(h, bool) or not 0 <= h < nh:
                raise ValueError(f"heads: {h!r} is out of range for {nh} heads")
        heads = [int(h) for h in heads]
    elif heads is not None:
        raise ValueError("heads: only for head components (head_attention_value_output, head_query_output, ...)")

    B = b_ids.shape[0]
    with torch.no_grad():
        src_vals = src_gm(input_ids=s_ids, attention_mask=s_mask)
    alphas = []
    for s in sites:
        shape = (B, s.n_heads, seq) if s.n_heads is not None else (B, seq)
        alphas.append(
            torch.zeros(
                shape,
                dtype=torch.float64 if _dtype(model) == torch.float64 else torch.float32,
                device=b_ids.device,
                requires_grad=True,
            )
        )
    feeds = {"input_ids": b_ids, "attention_mask": b_mask}
    for j in range(len(sites)):
        feeds[f"fxv_src_{j}"] = src_vals[j]
        feeds[f"fxv_alpha_{j}"] = alphas[j]
    with torch.enable_grad():
        logits = interp_gm(**feeds)[0][:, -1]
        values = met(logits)  # (B, k)
        k = values.shape[1]
        grads = []
        for col in range(k):
            g = torch.autograd.grad(values[:, col].sum(), alphas, retain_graph=col + 1 < k, allow_unused=True)
            grads.append([torch.zeros_like(a) if gi is None else gi for gi, a in zip(g, alphas)])
    base_vals = values.detach()
    pos_t = torch.tensor(positions)
    # estimates[component, layer, position, (head,) example, k]
    per_site = []
    for j, s in enumerate(sites):
        cols = []
        for col in range(k):
            g = grads[col][j].detach()
            if s.n_heads is not None:
                g = g[:, heads][:, :, pos_t].permute(2, 1, 0)  # (P, H, B)
            else:
                g = g[:, pos_t].permute(1, 0)  # (P, B)
            cols.append(g)
        per_site.append(torch.stack(cols, -1))
    est = torch.stack(per_site, 0)
    est = est.reshape((len(components), len(layers)) + tuple(est.shape[1:]))
    result = AttributionResult(
        values=base_vals + est,
        base=base_vals,
        components=components,
        layers=layers,
        positions=positions,
        heads=heads,
        tokens=met.tokens,
        metric=met.label,
        forwards={"forwards": 2, "backwards": k, "exact_rows": 0},
    )
    if exact_top_k:
        result.exact = _exact(
            model, base, source, result, keys, met, int(exact_top_k), tracer, max_rows, progress, prefix
        )
        result.forwards["exact_rows"] = int((~torch.isnan(result.exact)).sum())
    return result


def _dtype(model):
    return next(model.parameters()).dtype


def _exact(model, base, source, result, keys, met, k, tracer, max_rows, progress, prefix):
    """Re-run the ``k`` cells with the largest |estimate| exactly (rows of the sweep engine)."""
    from fxvene.sweeps.core import engine_for

    eff = result.effects
    flat = eff.abs().reshape(-1)
    k = min(k, flat.numel())
    top = torch.topk(flat, k).indices
    idx = torch.stack(torch.unravel_index(top, eff.shape), 1).tolist()
    # one row per distinct (cell, example); the metric's columns come from the same row
    cells = sorted({tuple(i[:-1]) for i in idx})
    use_tokens = met.readout is not None
    eng = engine_for(model, keys, tracer, use_tokens, False, prefix)
    tok = torch.tensor(met.readout) if use_tokens else None
    has_heads = result.heads is not None
    n_sites = len(keys)
    loc = np.full((len(cells), n_sites), -1, dtype=np.int64)
    head = np.zeros((len(cells), n_sites), dtype=np.int64)
    sample = np.empty(len(cells), dtype=np.int64)
    for r, cell in enumerate(cells):
        ci, li, pi = cell[:3]
        j = ci * len(result.layers) + li
        loc[r, j] = result.positions[pi]
        if has_heads:
            head[r, j] = result.heads[cell[3]]
        sample[r] = cell[-1]
    with eng.compiling():
        b = eng.prepare(base, tokens=tok)
        s = eng.prepare(source, tokens=tok)
        out = eng.run_rows(
            b,
            s,
            {"sample": sample, "loc": loc, "head": head if has_heads else None},
            tokens=tok,
            max_rows=max_rows,
            progress=progress,
        )
    vals = met(out.to(result.base.dtype), readout_columns=use_tokens)
    exact = torch.full_like(result.values, float("nan"))
    row_of = {cell: r for r, cell in enumerate(cells)}
    for i in idx:
        exact[tuple(i)] = vals[row_of[tuple(i[:-1])], i[-1]]
    return exact


__all__ = [
    "attribution_patching",
    "AttributionResult",
    "Interpolate",
    "interpolation_graph",
    "source_graph",
    "make_metric",
    "Metric",
    "METRICS",
]
