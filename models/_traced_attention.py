"""What the module tree cannot say about an attention module, read off its traced graph (block 0's):
how a fused q/k/v projection's output is laid out (``fused_layout``), and which projection is
the query, key or value when their names do not say (``projection_roles``).

The module tree says a projection is fused (``qkv_proj``, ``query_key_value``, ``c_attn``, and
``(heads + 2 x kv_heads) x head_dim`` wide) but not how q, k and v lie in its output. The attention
module's own code says it: this traces that module (``make_fx``, on the inputs it receives in one
short forward of the model, stopped there) with the fused output as a graph input, and reads the
first ops that consume it:

- a ``split`` or slices of the flat last dim into three runs ``[q | k | v]``: equal thirds (GPT-2,
  ``Component.fused=None``) or the query heads then the key and the value heads (``"sizes"``, Phi-3);
- a ``view`` of the last dim into key/value groups, each ``[its query heads | k | v]``: ``(G, w)``
  (GPT-NeoX: one group per head), ``(G, per_group, head_dim)`` (Falcon), or ``(heads + 2, head_dim)``
  (Falcon multi-query: one group): ``"grouped"``.

Anything else is not guessed: ``LayoutError`` says what the graph showed.
"""

from __future__ import annotations

import torch

_PASS = {"clone", "contiguous", "_to_copy", "alias", "detach", "to"}


class LayoutError(ValueError):
    pass


class _Stop(Exception):
    pass


def _captured_inputs(model, attn):
    """The (args, kwargs) block 0's attention receives in a 4-token forward (eval, RNG untouched)."""
    got = {}

    def hook(mod, args, kwargs):
        got["call"] = (args, kwargs)
        raise _Stop

    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = getattr(model.config, "vocab_size", None) or 4
    device = next(model.parameters()).device
    ids = (torch.arange(4, device=device) % vocab)[None]
    handle = attn.register_forward_pre_hook(hook, with_kwargs=True)
    was_training = model.training
    try:
        model.eval()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model(input_ids=ids, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
        model.train(was_training)
    if "call" not in got:
        raise LayoutError(
            "a forward of the model did not reach block 0's attention"
            + ("" if emb is not None else " (no input embeddings)")
        )
    return got["call"]


def _trace_with_inputs(model, attn, projections):
    """``(graph, examples)``: ``attn`` traced (``make_fx``) on the inputs it gets in a short forward,
    each module of ``projections`` replaced by a graph input (placeholders 1.., after the hidden
    states) whose example value is the module's real output."""
    from torch.fx.experimental.proxy_tensor import make_fx

    args, kwargs = _captured_inputs(model, attn)
    hidden = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(hidden, torch.Tensor):
        raise LayoutError("block 0's attention takes no hidden-states tensor first")
    with torch.no_grad():
        examples = [p(hidden) for p in projections]
    for ex in examples:
        if not isinstance(ex, torch.Tensor):
            raise LayoutError(f"a projection returns {type(ex).__name__}, not a tensor")

    def attention(h, *outs):
        own = [p.__dict__.get("forward") for p in projections]  # e.g. accelerate's hooked forward
        for p, o in zip(projections, outs):
            p.forward = (lambda out: lambda *a, **k: out)(o)
        try:
            return attn(h, *args[1:], **kwargs) if args else attn(**{**kwargs, "hidden_states": h})
        finally:
            for p, f in zip(projections, own):
                if f is None:
                    del p.forward
                else:
                    p.forward = f

    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            gm = make_fx(attention)(hidden, *examples)
    except Exception as e:  # noqa: BLE001 - any tracing failure is reported as what it is
        raise LayoutError(
            f"tracing block 0's attention failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None
    return gm, examples


_MATMUL = {"bmm", "mm", "matmul", "baddbmm"}
_SOFTMAX = {"_softmax", "softmax", "_safe_softmax"}


def _descendants(node):
    seen, todo = set(), [node]
    while todo:
        for u in todo.pop().users:
            if u not in seen:
                seen.add(u)
                todo.append(u)
    return seen


def _ancestors(node):
    seen, todo = set(), [node]
    while todo:
        for a in todo.pop().all_input_nodes:
            if a not in seen:
                seen.add(a)
                todo.append(a)
    return seen


def projection_roles(model, attn, named):
    """``{"query": name, "key": name, "value": name}`` for the projections ``named`` (name -> module)
    inside ``attn``, from where their outputs go in its traced graph: the query and the key into the
    two operands of the product that feeds the softmax, the value into the product that the softmax
    feeds (or the query/key/value operands of a fused attention kernel). Raises ``LayoutError``."""
    names = list(named)
    gm, _ = _trace_with_inputs(model, attn, [named[n] for n in names])
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"][1:]
    reach = {nm: _descendants(ph) | {ph} for nm, ph in zip(names, inputs)}
    operands = {}  # role -> the graph node the role's projection must reach
    kernels = [n for n in gm.graph.nodes if "scaled_dot_product" in _target(n)]
    softmaxes = [n for n in gm.graph.nodes if _target(n) in _SOFTMAX]
    if len(kernels) == 1:
        q, k, v = kernels[0].args[:3]
        operands = {"query": q, "key": k, "value": v}
    elif len(softmaxes) == 1:
        sm = softmaxes[0]
        fed = set().union(*reach.values())  # products of the projections (not e.g. a rotary table's)
        before = [n for n in _ancestors(sm) if _target(n) in _MATMUL and n in fed]
        after = [
            n
            for n in _descendants(sm)
            if _target(n) in _MATMUL
            and any(a is sm or a in _descendants(sm) for a in n.args[:1] if isinstance(a, torch.fx.Node))
        ]
        if len(before) == 1 and after:
            first = min(after, key=lambda n: list(gm.graph.nodes).index(n))
            a, b = before[0].args[-2:]
            operands = {"query": a, "key": b, "value": first.args[-1]}
    if not operands:
        raise LayoutError(
            f"its graph has {len(kernels)} attention kernels and {len(softmaxes)} softmaxes; expected one of either"
        )
    roles = {}
    for role, node in operands.items():
        hits = [nm for nm in names if node in reach[nm]]
        if len(hits) != 1:
            raise LayoutError(
                f"the {role} operand of the attention product comes from "
                f"{len(hits)} of the projections {names} ({', '.join(hits) or 'none'})"
            )
        roles[role] = hits[0]
    if len(set(roles.values())) != 3:
        raise LayoutError(f"one projection plays two roles: {roles}")
    return roles


def _target(node):
    t = node.target
    return getattr(t, "__name__", str(t)).split(".")[0]


def _consumers(node):
    """The first users of ``node`` that are not copies/casts."""
    out = []
    for u in node.users:
        if u.op == "call_function" and _target(u) in _PASS and len(u.users) >= 1:
            out.extend(_consumers(u))
        else:
            out.append(u)
    return out


def _runs(users, width, rank):
    """``[(start, stop), ...]`` of the last dim that split/slice ``users`` take, or None."""
    runs = []
    for u in users:
        name = _target(u)
        args = list(u.args)
        if name in ("split", "split_with_sizes"):
            dim = args[2] if len(args) > 2 else u.kwargs.get("dim", 0)
            if dim % rank != rank - 1:
                return None
            sizes = args[1] if name == "split_with_sizes" else [args[1]] * -(-width // args[1])
            start = 0
            for s in sizes:
                runs.append((start, min(start + s, width)))
                start += s
        elif name == "slice":
            dim = args[1] if len(args) > 1 else 0
            if dim % rank != rank - 1:
                return None
            start = args[2] if len(args) > 2 else 0
            stop = args[3] if len(args) > 3 else width
            start, stop = (
                start % width if start < 0 else min(start, width),
                stop % width if stop < 0 else min(stop, width),
            )
            runs.append((start, stop))
        else:
            return None
    return sorted(set(runs))


def fused_layout(model, attn, fused, heads, head_dim):
    """``(layout, n_kv)``: ``layout`` None (equal thirds), ``"sizes"`` or ``"grouped"`` for the fused
    projection module ``fused`` inside ``attn`` (block 0's attention of ``model``); ``n_kv`` the
    key/value head (group) count. Raises ``LayoutError`` with what the graph showed."""
    gm, examples = _trace_with_inputs(model, attn, [fused])
    example = examples[0]
    width, rank = int(example.shape[-1]), example.dim()
    qkv = [n for n in gm.graph.nodes if n.op == "placeholder"][1]
    users = _consumers(qkv)
    if not users:
        raise LayoutError("the attention does not use the fused projection's output")
    seen = ", ".join(f"{_target(u)}{tuple(a for a in u.args[1:] if not isinstance(a, torch.fx.Node))}" for u in users)

    runs = _runs(users, width, rank)
    if runs is not None:
        if (
            len(runs) == 3
            and runs[0][0] == 0
            and runs[0][1] == runs[1][0]
            and runs[1][1] == runs[2][0]
            and runs[2][1] == width
        ):
            q, k, v = (b - a for a, b in runs)
            if q == heads * head_dim and k == v and k % head_dim == 0:
                return (None if q == k else "sizes"), k // head_dim
        raise LayoutError(
            f"the fused output ({width} wide) is cut into runs {runs}, not [q ({heads} x {head_dim}) | k | v]"
        )

    if len(users) == 1 and _target(users[0]) in ("view", "reshape", "_unsafe_view"):
        shape = tuple(users[0].meta["val"].shape)
        lead, trail = shape[: rank - 1], shape[rank - 1 :]
        if lead == tuple(example.shape[:-1]):
            if len(trail) == 2 and trail[1] == head_dim and trail[0] == heads + 2:
                return "grouped", 1
            if len(trail) == 2 and heads % trail[0] == 0 and trail[1] == (heads // trail[0] + 2) * head_dim:
                return "grouped", trail[0]
            if len(trail) == 3 and trail[2] == head_dim and heads % trail[0] == 0 and trail[1] == heads // trail[0] + 2:
                return "grouped", trail[0]
    raise LayoutError(
        f"the attention consumes the fused output ({width} wide) by {seen}: not a layout fxvene reads "
        f"({heads} query heads of {head_dim})"
    )
