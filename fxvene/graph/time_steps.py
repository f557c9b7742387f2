"""``unit="t"``: interventions at time steps of a recurrent model (pyvene's GRU).

A recurrent model calls its cell once per time step, so a traced graph (torch.export unrolls
the loop) holds one copy of the cell per step; ``nn_module_stack`` names the k-th call of a
module with the suffix ``@k``. As in pyvene, time step t of a component is the t-th call
(counting from 0) of its module. Such a graph is traced for one sequence length
(``fxvene.graph.tracing.steps_signature`` keys it by length).

A site with unit ``t`` is one node per step. Setters are one ``StepOp`` per step (all
sharing the intervention and the per-call data of the first, ``fxv_site_{i}``): at step t, the
examples whose unit locations list t take the intervention, with the source value of the step
listed at the same place on the source side. Source runs and Collect read the steps stacked into
``(batch, steps, dim)`` and gather them like positions; a call returns a Collect's result as pyvene's
hooks do, a list of one ``(batch, dim)`` tensor per listed step (``IntervenableModel.forward``).

Where pyvene 0.1.8 differs (its time-step hooks are stateful counters): a setter that needs a
source feeds zeros at the steps *not* listed (so Vanilla zeroes them), a constant-source
intervention (Zero, Addition with a fixed source) fires at every step whatever the locations,
Collect returns every step, and a batch of more than one example fails. fxvene acts only at the
listed steps, for any batch; listing every step gives pyvene's numbers.
"""

from __future__ import annotations

import dataclasses
import re

import torch
import torch.nn as nn

from fxvene.graph.errors import known
from fxvene.models import config_value, eval_dim, family_for
from fxvene.passes.locate import is_tensor_node, normalize_path

_CALL = re.compile(r"@(\d+)$")


def _step_entries(node):
    """(module path, call index) of each entry in a node's ``nn_module_stack``."""
    stack = node.meta.get("nn_module_stack") or {}
    out = []
    for key, val in stack.items():
        path = val[0] if isinstance(val, tuple) and val and isinstance(val[0], str) else key
        m = _CALL.search(str(key))
        out.append((normalize_path(path), int(m.group(1)) if m else 0))
    return out


def step_region(gm, path, step):
    """Nodes of the ``step``-th call of module ``path``, in graph order."""
    path = normalize_path(path)
    return [n for n in gm.graph.nodes if (path, step) in _step_entries(n)]


def n_calls(gm, path):
    path = normalize_path(path)
    calls = {k for n in gm.graph.nodes for p, k in _step_entries(n) if p == path}
    return max(calls) + 1 if calls else 0


def step_node(gm, path, port, step):
    """The node of the output (or input) of the ``step``-th call of module ``path``."""
    nodes = step_region(gm, path, step)
    if not nodes:
        raise ValueError(f"module {path!r} has no call {step} in the traced graph")
    inside = set(nodes)
    if port == "output":  # the step stacks added for other components are no users of the model's own
        escaping = [
            n
            for n in nodes
            if is_tensor_node(n)
            and n.op != "get_attr"
            and any(u not in inside and u.meta.get("fxvene") != "time_steps" for u in n.users)
        ]
        if len(escaping) != 1:
            raise ValueError(
                f"output of call {step} of module {path!r} resolves to {len(escaping)} nodes; expected one"
            )
        return escaping[0]
    for n in nodes:
        for a in n.all_input_nodes:
            if a not in inside and a.op != "get_attr" and is_tensor_node(a):
                return a
    raise ValueError(f"input of call {step} of module {path!r}: the region consumes no outside tensor")


@dataclasses.dataclass(frozen=True)
class StepSite:
    """The per-step nodes of one (component, layer) and the ``fxvene.graph.sites.Site`` of step 0."""

    site: object
    nodes: tuple  # node name per step


def resolve(traced, model, component, layer):
    """The ``StepSite`` of a component of a recurrent model (``models/gru.py``) or of a string
    component (``"gru.cells[0].output"``) in ``traced``'s graph."""
    from fxvene.graph.sites import Site, _parse_string_component

    gm = traced.gm
    config = model.config
    fam, prefix = family_for(model)
    split3 = dim = None
    if "." in component or "[" in component:
        path, port = _parse_string_component(component)
        path = path.replace("%s", str(layer), 1)
    else:
        if fam is None or component not in fam.components:
            names = sorted(fam.components) if fam is not None else []
            raise ValueError(f"unknown component {component!r} for {type(model).__name__}; {known(component, names)}")
        n_layers = config_value(config, fam.n_layers)
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < n_layers:
            raise ValueError(f"layer {layer!r} is out of range for {type(model).__name__} with {n_layers} layers")
        spec = fam.components[component]
        path, port, split3 = prefix + spec.module.format(layer=layer), spec.port, spec.split3
        dim = eval_dim(spec.dim, config)
    steps = n_calls(gm, path)
    if steps == 0:
        raise ValueError(f"component {component!r}: model {type(model).__name__} has no module {path!r} in its graph")
    nodes = tuple(step_node(gm, path, port, t).name for t in range(steps))
    first = next(n for n in gm.graph.nodes if n.name == nodes[0])
    val = first.meta.get("val")
    shape = tuple(val.shape) if is_tensor_node(first) else None
    if dim is None and shape is not None and isinstance(shape[-1], int):
        dim = shape[-1] // 3 if split3 is not None else shape[-1]
    fields = dict(
        component=component,
        layer=layer,
        node=nodes[0],
        port=port,
        path=path,
        split3=split3,
        n_heads=None,
        dim=dim,
        shape=shape,
        dtype=getattr(val, "dtype", None),
    )
    if "fused" in Site.__dataclass_fields__ and split3 is not None:
        fields["fused"] = (1, 3, split3, split3 + 1)
    return StepSite(site=Site(**fields), nodes=nodes)


def axes(site):
    """Unit-check axes of a ``t`` site: units index the time steps (the run's sequence)."""
    from fxvene.graph.sites import Axes

    return Axes("seq", None, site.dim)


def stacked(traced, step_site, tag=None):
    """Name of a node holding the steps' values stacked on dim 1, ``(batch, steps, width)``, added
    to ``traced.gm`` once (an unused stack is dropped by ``truncate``; setters inserted at the steps
    rewire it, so it holds the intervened values). ``tag``: another stack of the same steps, for a
    Collect that must not see the setters listed after it (``requests``)."""
    gm = traced.gm
    memo = traced.meta.setdefault("step_stacks", {})
    if (step_site.nodes, tag) in memo:
        return memo[(step_site.nodes, tag)]
    if tag is None and step_site.nodes in memo:
        return memo[step_site.nodes]
    by_name = {n.name: n for n in gm.graph.nodes}
    last = by_name[step_site.nodes[-1]]
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    after = max((by_name[name] for name in step_site.nodes), key=order.__getitem__)
    with gm.graph.inserting_after(after):
        node = gm.graph.call_function(torch.stack, ([by_name[name] for name in step_site.nodes], 1))
    node.meta["fxvene"] = "time_steps"
    val = last.meta.get("val")
    if isinstance(val, torch.Tensor):
        node.meta["val"] = torch.empty(
            (val.shape[0], len(step_site.nodes), *val.shape[1:]), dtype=val.dtype, device="meta"
        )
    gm.recompile()
    memo[step_site.nodes if tag is None else (step_site.nodes, tag)] = node.name
    return node.name


class StepOp(nn.Module):
    """The setter at one time step: ``op(x, source, loc)`` where ``x`` is the step's value (b, ...),
    ``source`` the source values (b, n, ...) of the listed steps (or a broadcastable representation),
    ``loc`` (b, n) the listed steps. The first step's op (``lead=None``) holds the per-call data
    (``.call``) the runtime sets; the others read it from there."""

    def __init__(self, key, site, step, intervention, lead=None):
        super().__init__()
        self.key = key
        self.site = site
        self.step = step
        self.intervention = intervention
        self._lead = [lead] if lead is not None else []
        self.call = {}

    def _data(self):
        return self._lead[0].call if self._lead else self.call

    def forward(self, x, source=None, loc=None):
        from fxvene.graph.sites import do_intervention, scatter, site_view
        from fxvene.interventions import InterventionOutput

        call = self._data()
        if call.get("skip"):
            return x
        base = site_view(x, self.site)
        b = base.shape[0]
        if loc is None:  # unit_locations=None: every step, the source's own step
            hit = torch.ones(b, dtype=torch.bool, device=base.device)
            col = torch.full((b,), self.step, dtype=torch.long, device=base.device)
        else:
            eq = loc == self.step
            hit = eq.any(dim=1)
            col = eq.to(torch.int8).argmax(dim=1)
            if not torch.compiler.is_compiling() and not bool(hit.any()):
                return x
        src = source
        if source is not None and source.dim() == base.dim() + 1:
            src = source[torch.arange(source.shape[0], device=source.device), col]
        # a copy: an intervention may write into its base, and the rows not at this step must keep theirs
        out = do_intervention(
            self.intervention, base.clone(), src, call.get("subspaces"), unit_is_whole=True, **call.get("kwargs", {})
        )
        if isinstance(out, InterventionOutput):
            sink = call.get("full_outputs")
            if sink is not None:
                sink.append(out)
            out = out.output
        if out is None:
            return x
        new = torch.where(hit.view(-1, *([1] * (base.dim() - 1))), out.to(base.dtype), base)
        return scatter(x, self.site, "pos", None, new)


def setter_requests(step_site, i, key, intervention, keep=()):
    """``insert_interventions`` requests for a setter at every step (names ``fxv_site_{i}``, then
    ``fxv_site_{i}_t{t}``); ``keep``: stacks of Collects listed before it, which it must not reach."""
    lead = StepOp(key, step_site.site, 0, intervention)
    reqs = []
    for t, node in enumerate(step_site.nodes):
        op = lead if t == 0 else StepOp(key, step_site.site, t, intervention, lead=lead)
        reqs.append(
            dict(
                name=f"fxv_site_{i}" if t == 0 else f"fxv_site_{i}_t{t}",
                module=op,
                node=node,
                port=step_site.site.port,
                region=step_site.site.path,
                inputs=[f"fxv_src_{i}", f"fxv_loc_{i}"],
                keep=tuple(keep),
            )
        )
    return reqs


def prepare(traced, model, representations):
    """Add the step stacks of every ``t`` representation to ``traced.gm`` (once per traced graph),
    before any rewritten graph is derived from it."""
    reps = [r for r in (representations or {}).values() if getattr(r, "unit", None) == "t"]
    done = traced.meta.setdefault("step_stacks_for", set())
    for rep in reps:
        if (rep.component, rep.layer) not in done:
            stacked(traced, resolve(traced, model, rep.component, rep.layer))
            done.add((rep.component, rep.layer))
    return traced


def collect_stack(traced, model, rep, i):
    """The stack a Collect (representation ``i``, unit ``t``) reads when setters at the same steps are
    listed after it: its own, which those setters do not rewire (pyvene's Collect sees the value
    before every later write)."""
    return stacked(traced, resolve(traced, model, rep.component, rep.layer), tag=i)


def requests(traced, model, rep, i, key, intervention, collect=False, own_stack=False, keep=()):
    """``insert_interventions`` requests of representation ``i`` (unit ``t``) in ``traced``'s graph:
    a Collect tap on the stacked steps (``own_stack``: on ``collect_stack``), or a setter at every
    step that leaves the stacks in ``keep`` alone."""
    from fxvene.graph.sites import Gather

    ss = resolve(traced, model, rep.component, rep.layer)
    if collect:
        return [
            dict(
                name=f"fxv_collect_{i}",
                module=Gather(ss.site, "pos", f"unit_locations (base side) of {key}"),
                node=stacked(traced, ss, tag=i if own_stack else None),
                port="output",
                region=ss.site.path,
                inputs=[f"fxv_loc_{i}"],
                collect=True,
            )
        ]
    return setter_requests(ss, i, key, intervention, keep)


def source_request(traced, model, rep, i, key):
    """The ``expose`` request that reads representation ``i``'s steps (unit ``t``) in a source run."""
    from fxvene.graph.sites import Gather

    ss = resolve(traced, model, rep.component, rep.layer)
    return dict(
        node=stacked(traced, ss),
        module=Gather(ss.site, "pos", f"unit_locations (source side) of {key}"),
        name=f"fxv_get_{i}",
        inputs=[f"fxv_sloc_{i}"],
    )
