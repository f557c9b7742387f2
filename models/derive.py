"""A component spec derived from a decoder's module tree and config, for a model whose class no
spec in this package names.

The derivation reads, in order: the base model (``model.<base_model_prefix>``), the
``ModuleList`` of blocks (as long as the config's layer count, one block class), and inside
block 0 the attention module and the MLP (by name, checked by the shapes of the linear layers
in them); inside the attention the query/key/value/output projections (by name, each checked by
its shape against the head geometry the config gives: ``num_attention_heads`` / ``n_head`` /
``num_heads``, ``num_key_value_heads``, ``head_dim``), or one fused QKV projection; inside the
MLP its activation module. The result is a ``Family`` marked
``derived=True``; a component it cannot place is left out of ``components`` and its reason kept
in ``missing`` (the error a user gets when asking for it), never guessed.

The module tree and config suffice, except for two things read off the traced attention of block 0
(models/_traced_attention.py, after one short forward): how q, k and v lie in a fused QKV output,
and which projection is which when their names say nothing.
"""

from __future__ import annotations

from .spec import Component, Family, eval_dim

# torch is imported on first use: fxvene.models is read by the CLI's argument checks, which load
# neither torch nor transformers


class _LazyNN:
    def __getattr__(self, name):
        import torch.nn

        return getattr(torch.nn, name)


nn = _LazyNN()

_C = Component


class DeriveError(ValueError):
    """The model has no decoder layout this module can read (no blocks, no attention, ...)."""


# names by role (the last component of a module path, lower case); checked by shape afterwards
_ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention", "mixer")
_MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe", "moe", "ff")
_ROLE_NAMES = {
    "query": ("q_proj", "query", "q", "wq", "q_lin", "query_proj"),
    "key": ("k_proj", "key", "k", "wk", "k_lin", "key_proj"),
    "value": ("v_proj", "value", "v", "wv", "v_lin", "value_proj"),
    "output": ("o_proj", "out_proj", "dense", "c_proj", "wo", "o", "out_lin", "output_proj"),
    "fused": ("qkv_proj", "query_key_value", "c_attn", "qkv", "wqkv", "w_pack"),
}
_ROLE_LABEL = {
    "query": "query projection",
    "key": "key projection",
    "value": "value projection",
    "output": "attention output projection",
}
_ACT_NAMES = ("act", "act_fn", "activation_fn", "activation", "act_func")
_ACT_CLASS_ENDINGS = ("gelu", "relu", "silu", "swish", "mish", "activation")  # e.g. Bloom's BloomGelu

# config attribute names, most common first
_LAYERS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_HIDDEN = ("hidden_size", "n_embd", "d_model")
_HEADS = ("num_attention_heads", "n_head", "num_heads", "n_heads")
_KV_HEADS = ("num_key_value_heads", "num_kv_heads", "n_head_kv", "n_kv_heads")
_INTER = ("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size", "inner_dim")


def _cfg_name(config, names):
    """``(name, value)`` of the first attribute of ``names`` the config has (an int); names the
    config stores itself win over aliases (``n_layer`` over ``num_hidden_layers`` on GPT-2)."""
    stored = vars(config)
    for pool in ([n for n in names if n in stored], list(names)):
        for n in pool:
            v = getattr(config, n, None)
            if isinstance(v, int) and not isinstance(v, bool):
                return n, v
    return None, None


def _linear_io(mod):
    """``(in, out)`` features of a linear-like module (nn.Linear and subclasses, HF's Conv1D)."""
    if isinstance(mod, nn.Linear):
        return mod.in_features, mod.out_features
    w = getattr(mod, "weight", None)
    nf = getattr(mod, "nf", None)
    if w is not None and nf is not None and getattr(w, "ndim", 0) == 2:  # transformers' Conv1D
        return int(w.shape[0]), int(nf)
    return None


def _linears(module, prefix=""):
    return [(prefix + n, m, _linear_io(m)) for n, m in module.named_modules() if _linear_io(m) is not None]


def _is_activation(name, mod):
    cls = type(mod)
    mod_name = cls.__module__
    if mod_name.startswith("torch.nn.modules.activation") or mod_name.startswith("transformers.activations"):
        return True
    leaf = not list(mod.children()) and not list(mod.parameters())
    return leaf and (name.lower() in _ACT_NAMES or cls.__name__.lower().endswith(_ACT_CLASS_ENDINGS))


def _base(model):
    attr = getattr(model, "base_model_prefix", "") or ""
    sub = getattr(model, attr, None) if attr else None
    if isinstance(sub, nn.Module) and sub is not model:
        return sub, attr + "."
    return model, ""


def _find_blocks(base, n_layers, where):
    """Path of the ModuleList of ``n_layers`` blocks of one class (shallowest first)."""
    found = []
    for name, mod in base.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n_layers and n_layers > 0:
            if len({type(b) for b in mod}) == 1 and _linears(mod[0]):
                found.append(name)
    if not found:
        raise DeriveError(f"no ModuleList of {n_layers} blocks of one class in {where}")
    depth = min(p.count(".") for p in found)
    top = [p for p in found if p.count(".") == depth]
    if len(top) > 1:
        raise DeriveError(
            f"{where} has several ModuleLists of {n_layers} blocks ({', '.join(top)}); "
            "cannot tell which holds the decoder blocks"
        )
    return top[0]


def _named_child(block, names, exclude=()):
    hits = [(n, m) for n, m in block.named_children() if n.lower() in names and n not in exclude]
    return hits[0] if len(hits) == 1 else (None, None)


class _Geometry:
    """Head geometry from the config, checked against the projections' shapes."""

    def __init__(self, config):
        self.hidden_attr, self.hidden = _cfg_name(config, _HIDDEN)
        self.heads_attr, self.heads = _cfg_name(config, _HEADS)
        self.kv_attr, kv = _cfg_name(config, _KV_HEADS)
        self.kv = kv if kv is not None else self.heads
        hd = getattr(config, "head_dim", None)
        if isinstance(hd, int) and hd > 0:
            self.head_dim, self.head_dim_expr = hd, "head_dim"
        elif self.hidden and self.heads:
            self.head_dim, self.head_dim_expr = self.hidden // self.heads, f"{self.hidden_attr}/{self.heads_attr}"
        else:
            self.head_dim = self.head_dim_expr = None

    def width_expr(self, width, config):
        """A config expression for ``width`` (hidden, all heads, or key/value heads); None if none
        evaluates to it (the engine then reads the width off the graph)."""
        for expr in (self.hidden_attr, f"{self.heads_attr}*head_dim", "kv_dim"):
            if eval_dim(expr, config) == width:
                return expr
        return None


def _role_candidates(attn, role):
    names = _ROLE_NAMES[role]
    return [(n, m, io) for n, m, io in _linears(attn) if n.split(".")[-1].lower() in names]


def _role_by_graph(model, attn, role, geo, memo):
    """The q/k/v projection of ``role`` found by where its output goes in the traced attention (for
    projections whose names say nothing), or a string saying why not. ``memo`` caches the trace."""
    from ._traced_attention import LayoutError, projection_roles

    lin = [(n, m, io) for n, m, io in _linears(attn) if io[0] == geo.hidden and io[1] % geo.head_dim == 0]
    if "roles" not in memo and "why" not in memo:
        try:
            memo["roles"] = projection_roles(model, attn, {n: m for n, m, _ in lin})
        except LayoutError as e:
            memo["why"] = str(e)
    if "why" in memo:
        return f"the traced attention does not tell either: {memo['why']}"
    name = memo["roles"][role]
    return next(c for c in lin if c[0] == name)


def _output_by_shape(attn, geo, taken):
    """The output projection when its name says nothing: the one linear (heads x head_dim -> hidden)
    left once q, k and v are placed (all three must be), or a string saying why not."""
    want = (geo.heads * geo.head_dim, geo.hidden)
    lin = [c for c in _linears(attn) if c[2] == want and c[0] not in taken]
    if taken is not None and len(lin) == 1:
        return lin[0]
    if taken is None:
        return "q, k and v are not all placed, so the leftover projection is not known"
    return f"by shape ({want[0]} -> {want[1]}, not q/k/v) the candidates are {[n for n, _, _ in lin] or 'none'}"


def _attention_parts(model, attn, attn_path, geo, missing, block_where):
    """q/k/v/o components of the attention module at ``attn_path``, or reasons in ``missing``."""
    comps = {}
    H, KV, dh, D = geo.heads, geo.kv, geo.head_dim, geo.hidden
    config = model.config
    if not (H and dh and D):
        why = f"the config gives no head geometry (looked for {' / '.join(_HEADS)} and {' / '.join(_HIDDEN)})"
        for c in (
            "attention_value_output",
            "head_attention_value_output",
            "query_output",
            "key_output",
            "value_output",
            "head_query_output",
            "head_key_output",
            "head_value_output",
        ):
            missing[c] = why
        return comps
    want = {"query": H * dh, "key": KV * dh, "value": KV * dh}

    by_graph = {}

    def pick(role):
        cands = _role_candidates(attn, role)
        label = _ROLE_LABEL[role]
        looked = ", ".join("…" + n for n in _ROLE_NAMES[role][:4])
        if not cands:
            found = (
                _role_by_graph(model, attn, role, geo, by_graph)
                if role != "output"
                else _output_by_shape(attn, geo, taken)
            )
            if isinstance(found, str):
                return None, (f"no module of role '{label}' ({looked}) in {block_where}; {found}")
            cands = [found]
        if len(cands) > 1:
            return None, (
                f"several modules of role '{label}' in {block_where}: "
                f"{', '.join(attn_path + '.' + n for n, _, _ in cands)}"
            )
        name, _, (fin, fout) = cands[0]
        if role == "output":
            ok, shape_want = fin == H * dh and fout == D, f"{H * dh} -> {D}"
        else:
            ok, shape_want = fin == D and fout == want[role], f"{D} -> {want[role]}"
        if not ok:
            return None, (
                f"module {attn_path}.{name} (role '{label}') maps {fin} -> {fout} features; "
                f"the config's head geometry wants {shape_want}"
            )
        return f"{attn_path}.{name}", None

    fused = _role_candidates(attn, "fused")
    separate = {r: _role_candidates(attn, r) for r in ("query", "key", "value")}
    if fused and not any(separate.values()):
        _fused_parts(model, attn, fused, attn_path, geo, comps, missing, block_where)
    else:
        _separate_parts(pick, geo, config, comps, missing)
    # the output projection last: by name, else the one (heads x head_dim -> hidden) left over
    qkv = [
        c.module[len(attn_path) + 1 :] for k, c in comps.items() if k in ("query_output", "key_output", "value_output")
    ]
    taken = set(qkv) if len(qkv) == 3 else None
    o_path, o_err = pick("output")
    if o_err:
        missing["attention_value_output"] = missing["head_attention_value_output"] = o_err
    else:
        comps["attention_value_output"] = _C(o_path, "input", dim=geo.width_expr(H * dh, config))
        comps["head_attention_value_output"] = _C(o_path, "input", heads=geo.heads_attr, dim=geo.head_dim_expr)
    return comps


def _separate_parts(pick, geo, config, comps, missing):
    H, KV, dh = geo.heads, geo.kv, geo.head_dim
    want = {"query": H * dh, "key": KV * dh, "value": KV * dh}
    for role in ("query", "key", "value"):
        path, err = pick(role)
        if err:
            missing[f"{role}_output"] = missing[f"head_{role}_output"] = err
            continue
        heads_attr = geo.heads_attr if role == "query" else (geo.kv_attr or geo.heads_attr)
        if role != "query" and KV != H and geo.kv_attr is None:
            err = f"{path} is {KV * dh} wide but the config names no key/value head count"
            missing[f"{role}_output"] = missing[f"head_{role}_output"] = err
            continue
        comps[f"{role}_output"] = _C(path, "output", dim=geo.width_expr(want[role], config))
        comps[f"head_{role}_output"] = _C(path, "output", heads=heads_attr, dim=geo.head_dim_expr)
    return comps


def _fused_parts(model, attn, fused, attn_path, geo, comps, missing, block_where):
    from ._traced_attention import LayoutError, fused_layout

    H, dh, D = geo.heads, geo.head_dim, geo.hidden
    roles = ("query", "key", "value")
    if len(fused) > 1:
        err = f"several fused QKV projections in {block_where}: {', '.join(n for n, _, _ in fused)}"
    else:
        name, mod, (fin, fout) = fused[0]
        path = f"{attn_path}.{name}"
        try:
            if fin != D or fout % dh or (fout // dh - H) <= 0 or (fout // dh - H) % 2:
                raise LayoutError(
                    f"{fin} -> {fout} features is not hidden ({D}) -> ({H} query heads + 2 x "
                    f"key/value heads) x head_dim ({dh})"
                )
            layout, n_kv = fused_layout(model, attn, mod, H, dh)
        except LayoutError as e:
            err = f"fused QKV projection {path} in {block_where}: {e}"
        else:
            spec = None if layout is None else (layout, geo.heads_attr, geo.head_dim_expr)
            heads = geo.heads_attr if layout is None else "layout"
            widths = (H * dh, n_kv * dh, n_kv * dh)
            for slot, role in enumerate(roles):
                comps[f"{role}_output"] = _C(
                    path, "output", split3=slot, fused=spec, dim=geo.width_expr(widths[slot], model.config)
                )
                comps[f"head_{role}_output"] = _C(
                    path, "output", split3=slot, fused=spec, heads=heads, dim=geo.head_dim_expr
                )
            return
    for role in roles:
        missing[f"{role}_output"] = missing[f"head_{role}_output"] = err


def _mlp_by_shape(block, attn_name, hidden):
    """The one child of ``block`` (not the attention) holding a linear out of the hidden size and
    one back into it (``(None, None)`` when not exactly one)."""
    hits = []
    for name, child in block.named_children():
        ios = [io for _, _, io in _linears(child)]
        if name != attn_name and any(i == hidden != o for i, o in ios) and any(o == hidden != i for i, o in ios):
            hits.append((name, child))
    return hits[0] if len(hits) == 1 else (None, None)


def _activation(mlp, mlp_path, config, geo, block_where):
    """The MLP's activation module (a direct child) and its width expression, or an error."""
    hits = [(n, m) for n, m in mlp.named_children() if _is_activation(n, m)]
    if len(hits) != 1:
        found = "none" if not hits else ", ".join(n for n, _ in hits)
        return None, (
            f"no single activation module directly inside {mlp_path} of {block_where} "
            f"(looked for an activation class or a child named {', '.join(_ACT_NAMES)}; found {found})"
        )
    name = hits[0][0]
    # its width: what the projection back to the hidden size reads
    downs = [io for n, m, io in _linears(mlp) if io[1] == geo.hidden and io[0] != geo.hidden]
    width = downs[0][0] if len(downs) == 1 else None
    if width is None:
        return _C(f"{mlp_path}.{name}", "output"), None
    attr, v = _cfg_name(config, _INTER)
    if attr is not None and v == width:
        dim = attr
    elif geo.hidden and width % geo.hidden == 0:
        dim = f"{geo.hidden_attr}*{width // geo.hidden}"
    else:
        dim = str(width)
    return _C(f"{mlp_path}.{name}", "output", dim=dim), None


def _common_parent(paths):
    parents = [p.split(".")[:-1] for p in paths]
    if not parents:
        return None
    common = []
    for parts in zip(*parents):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return ".".join(common)


_ORDER = (
    "block_input",
    "block_output",
    "mlp_activation",
    "mlp_output",
    "mlp_input",
    "attention_value_output",
    "head_attention_value_output",
    "attention_weight",
    "attention_output",
    "attention_input",
    "query_output",
    "key_output",
    "value_output",
    "head_query_output",
    "head_key_output",
    "head_value_output",
)


def derive_family(model):
    """The ``Family`` derived for ``model`` (``derived=True``); raises ``DeriveError``
    when the model has no decoder layout to read (no config, no blocks, no attention or MLP)."""
    cls = type(model).__name__
    config = getattr(model, "config", None)
    if config is None:
        raise DeriveError(f"{cls} has no config")
    base, prefix = _base(model)
    layers_attr, n_layers = _cfg_name(config, _LAYERS)
    if layers_attr is None:
        raise DeriveError(f"{cls}: the config gives no layer count (looked for {', '.join(_LAYERS)})")
    where = f"{cls}" + (f".{prefix[:-1]}" if prefix else "")
    blocks = _find_blocks(base, n_layers, where)
    block = base.get_submodule(blocks)[0]
    bt = f"{blocks}.{{layer}}"
    block_where = f"block 0 ({prefix}{blocks}.0) of {cls}"
    geo = _Geometry(config)
    if geo.hidden_attr is None:
        raise DeriveError(f"{cls}: the config gives no hidden size (looked for {', '.join(_HIDDEN)})")
    hid = geo.hidden_attr

    comps, missing = {}, {}
    comps["block_input"] = _C(bt, "input", dim=hid)
    comps["block_output"] = _C(bt, "output", dim=hid)

    attn_name, attn = _named_child(block, _ATTN_NAMES)
    if attn is None:
        raise DeriveError(
            f"no attention module in {block_where} (looked for a child named "
            f"{', '.join(_ATTN_NAMES)}; children: {', '.join(n for n, _ in block.named_children())})"
        )
    mlp_name, mlp = _named_child(block, _MLP_NAMES, exclude=(attn_name,))
    if mlp is None:
        mlp_name, mlp = _mlp_by_shape(block, attn_name, geo.hidden)
    if mlp is None:
        raise DeriveError(
            f"no MLP module in {block_where} (looked for a child named "
            f"{', '.join(_MLP_NAMES)}, or the one child other than {attn_name} that maps "
            f"the hidden size {geo.hidden} out and back; children: "
            f"{', '.join(n for n, _ in block.named_children())})"
        )
    attn_path, mlp_path = f"{bt}.{attn_name}", f"{bt}.{mlp_name}"

    act, err = _activation(mlp, mlp_path, config, geo, block_where)
    if err:
        missing["mlp_activation"] = err
    else:
        comps["mlp_activation"] = act
    comps["mlp_output"] = _C(mlp_path, "output", dim=hid)
    comps["mlp_input"] = _C(mlp_path, "input", dim=hid)

    parts = _attention_parts(model, attn, attn_path, geo, missing, block_where)
    comps.update(parts)
    # the attention probabilities: inside the module that holds the projections (GPT-Neo's
    # attn.attention inside the attn wrapper), found there by a structural pattern
    core = _common_parent({c.module for c in parts.values()}) or attn_path
    comps["attention_weight"] = _C(
        core, "output", dim="max_position_embeddings", pattern="attention_probs", needs="eager"
    )
    comps["attention_output"] = _C(attn_path, "output", dim=hid)
    comps["attention_input"] = _C(attn_path, "input", dim=hid)

    ordered = {k: comps[k] for k in _ORDER if k in comps}
    ordered.update({k: v for k, v in comps.items() if k not in ordered})
    missing = {k: missing[k] for k in _ORDER if k in missing}
    name = getattr(config, "model_type", None) or cls
    return Family(
        name=name, prefixes={cls: prefix}, components=ordered, n_layers=layers_attr, derived=True, missing=missing
    )


def describe_derived(fam):
    """Lines saying a family is derived and which components it could not place."""
    if not getattr(fam, "derived", False):
        return []
    lines = [
        f"component map: derived from the module tree (no spec in fxvene.models names "
        f"{', '.join(fam.prefixes)}); {len(fam.components)} components"
    ]
    for comp, why in fam.missing.items():
        lines.append(f"  not derived: {comp}: {why}")
    return lines
