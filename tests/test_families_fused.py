"""GPT-Neo, GPT-NeoX (Pythia), GPT-J, Falcon and Phi-3: every component and every feature on a tiny
random config per family (issue 12).

Oracles: forward hooks on the HF modules, written here from each family's HF code (the module paths and
the q/k/v layouts of the fused projections: GPT-NeoX and classic Falcon per head, Falcon's new decoder
architecture per key/value group, Falcon multi-query and Phi-3 by sizes); q/k/v recomputed from the
fused projection's weights; the attention output per head (a head's zeroed value zeroes exactly that
head's columns of the attention output); HF's own forward and ``generate``; pyvene 0.1.8 for GPT-Neo and
GPT-NeoX. Never fxvene itself.
"""

import pytest
import torch
from _hooks import capture, cli_components, head_view, hooked
from _matrix import cell
from _tiny import AVAILABLE, make_tiny

import fxvene as pv
from fxvene.graph.tracing import hf_fx_available
from fxvene.models import family_for
from fxvene.sweeps.core import trace_noise, window_layers
from fxvene.sweeps.sweep import causal_trace, patching_sweep

FAMILIES = [f for f in ("gpt_neo", "gpt_neox", "gptj", "falcon", "phi3") if f in AVAILABLE]
# model variants: (family, config overrides); Falcon's default tiny config is multi-query
VARIANTS = {
    "gpt_neo": ("gpt_neo", {}),
    "gpt_neox": ("gpt_neox", {}),
    "gptj": ("gptj", {}),
    "falcon": ("falcon", {}),
    "falcon_new": ("falcon", dict(new_decoder_architecture=True, num_kv_heads=2)),
    "falcon_classic": ("falcon", dict(multi_query=False)),
    "phi3": ("phi3", {}),
}
HF_FX = {"gpt_neo", "gptj"}  # the families transformers' fx tracer supports
L = 1  # the layer the component checks use (of 2)
B, S = 2, 5
VOCAB = 64


def _frontends(family):
    return (["hf_fx"] if hf_fx_available() and family in HF_FX else []) + ["export"]


def _params(feature, variants=None, with_frontend=False):
    out = []
    for v in variants or FAMILIES:
        fam = VARIANTS[v][0]
        if fam not in FAMILIES:
            continue
        if with_frontend:
            out += [pytest.param(v, fe, marks=cell(fam, feature), id=f"{v}-{fe}") for fe in _frontends(fam)]
        else:
            out.append(pytest.param(v, marks=cell(fam, feature), id=v))
    return out


_MODELS = {}


def model_for(variant, head="causal_lm"):
    key = (variant, head)
    if key not in _MODELS:
        fam, over = VARIANTS[variant]
        _MODELS[key] = make_tiny(fam, head=head, **over)
    return _MODELS[key]


def _ids(seed, b=B, s=S):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (b, s), generator=g)


def _inputs(seed, b=B, s=S, pad=0):
    ids = _ids(seed, b, s)
    mask = torch.ones_like(ids)
    if pad:
        ids[1, :pad] = 2
        mask[1, :pad] = 0
    return {"input_ids": ids, "attention_mask": mask}


# ------------------------------------------------------------------------------- the hand-written oracle
# For every family: component -> (module path at layer L of the causal LM, port, view). A view takes the
# module port's tensor and gives the component as pyvene would: (b, s, width) or, per head, (b, H, s, d).
# Written from the HF modeling code, not from models/.


def _qkv_neox(t, slot, H):  # GPT-NeoX / classic Falcon: qkv.view(b, s, H, 3 * d), then chunk(3, -1)
    b, s, w = t.shape
    d = w // (3 * H)
    return t.view(b, s, H, 3 * d)[..., slot * d : (slot + 1) * d]  # (b, s, H, d)


def _qkv_falcon_mq(t, slot, H):  # Falcon multi-query: view(b, s, H + 2, d); q = [:-2], k = [-2], v = [-1]
    b, s, w = t.shape
    x = t.view(b, s, H + 2, w // (H + 2))
    return (x[:, :, :-2], x[:, :, [-2]], x[:, :, [-1]])[slot]


def _qkv_falcon_new(t, slot, H, KV):  # Falcon new architecture: view(b, s, KV, H/KV + 2, d)
    b, s, w = t.shape
    x = t.view(b, s, KV, H // KV + 2, w // (H + 2 * KV))
    return (x[:, :, :, :-2].flatten(2, 3), x[:, :, :, -2], x[:, :, :, -1])[slot]


def _qkv_phi3(t, slot, H, KV):  # Phi-3: [q | k | v] by sizes
    b, s, w = t.shape
    d = w // (H + 2 * KV)
    q, k = H * d, KV * d
    part = (t[..., :q], t[..., q : q + k], t[..., q + k :])[slot]
    return part.reshape(b, s, -1, d)


def _fused_view(variant, model):
    cfg = model.config
    H = cfg.num_attention_heads
    if variant == "gpt_neox" or variant == "falcon_classic":
        return lambda t, slot: _qkv_neox(t, slot, H)
    if variant == "falcon":
        return lambda t, slot: _qkv_falcon_mq(t, slot, H)
    if variant == "falcon_new":
        return lambda t, slot: _qkv_falcon_new(t, slot, H, cfg.num_kv_heads)
    if variant == "phi3":
        return lambda t, slot: _qkv_phi3(t, slot, H, cfg.num_key_value_heads)
    return None


class View:
    """A component as pyvene views it, from a module port's tensor: the columns ``cols`` of the last dim
    (a q/k/v slot of a fused output, in head order; None: all), split into ``n`` heads (None: not split).
    ``write(t, fn)``: ``t`` with ``fn`` applied in place to the view (the written columns put back)."""

    def __init__(self, cols=None, n=None):
        self.cols, self.n = cols, n

    def _split(self, f):
        return f if self.n is None else head_view(f, self.n)

    def __call__(self, t):
        return self._split(t if self.cols is None else t[..., self.cols])

    def write(self, t, fn):
        t = t.clone()
        f = t if self.cols is None else t[..., self.cols].clone()
        fn(self._split(f))  # _heads of a contiguous tensor is a view: fn's writes land in f
        if self.cols is not None:
            t[..., self.cols] = f
        return t


def _slot_cols(variant, model, width, slot):
    """The fused output's columns of q/k/v slot ``slot``, head by head, from the hand-written HF layout."""
    idx = torch.arange(width).view(1, 1, width)
    return _fused_view(variant, model)(idx, slot).reshape(-1)


def hand_table(variant, model):
    """component -> (path, port, View) for ``model`` (a causal LM) at layer L."""
    fam = VARIANTS[variant][0]
    cfg = model.config
    if fam == "gpt_neo":
        blk, att, mlp, H = (
            f"transformer.h.{L}",
            f"transformer.h.{L}.attn.attention",
            f"transformer.h.{L}.mlp",
            cfg.num_heads,
        )
        t = {
            "attention_output": (f"{blk}.attn", "output"),
            "attention_input": (f"{blk}.attn", "input"),
            "attention_value_output": (f"{att}.out_proj", "input"),
            "mlp_activation": (f"{mlp}.act", "output"),
        }
        qkv = {s: f"{att}.{s[0]}_proj" for s in ("query", "key", "value")}
    elif fam == "gptj":
        blk, att, mlp, H = f"transformer.h.{L}", f"transformer.h.{L}.attn", f"transformer.h.{L}.mlp", cfg.n_head
        t = {
            "attention_output": (att, "output"),
            "attention_input": (att, "input"),
            "attention_value_output": (f"{att}.out_proj", "input"),
            "mlp_activation": (f"{mlp}.act", "output"),
        }
        qkv = {s: f"{att}.{s[0]}_proj" for s in ("query", "key", "value")}
    elif fam == "gpt_neox":
        blk, att, mlp, H = (
            f"gpt_neox.layers.{L}",
            f"gpt_neox.layers.{L}.attention",
            f"gpt_neox.layers.{L}.mlp",
            cfg.num_attention_heads,
        )
        t = {
            "attention_output": (att, "output"),
            "attention_input": (att, "input"),
            "attention_value_output": (f"{att}.dense", "input"),
            "mlp_activation": (f"{mlp}.act", "output"),
        }
        qkv = {s: f"{att}.query_key_value" for s in ("query", "key", "value")}
    elif fam == "falcon":
        blk, att, mlp, H = (
            f"transformer.h.{L}",
            f"transformer.h.{L}.self_attention",
            f"transformer.h.{L}.mlp",
            cfg.num_attention_heads,
        )
        t = {
            "attention_output": (att, "output"),
            "attention_input": (att, "input"),
            "attention_value_output": (f"{att}.dense", "input"),
            "mlp_activation": (f"{mlp}.act", "output"),
        }
        qkv = {s: f"{att}.query_key_value" for s in ("query", "key", "value")}
    elif fam == "phi3":
        blk, att, mlp, H = (
            f"model.layers.{L}",
            f"model.layers.{L}.self_attn",
            f"model.layers.{L}.mlp",
            cfg.num_attention_heads,
        )
        t = {
            "attention_output": (att, "output"),
            "attention_input": (att, "input"),
            "attention_value_output": (f"{att}.o_proj", "input"),
            "mlp_activation": (f"{mlp}.activation_fn", "output"),
        }
        qkv = {s: f"{att}.qkv_proj" for s in ("query", "key", "value")}
    table = {c: (p, port, View()) for c, (p, port) in t.items()}
    table.update(
        {
            "block_input": (blk, "input", View()),
            "block_output": (blk, "output", View()),
            "mlp_input": (mlp, "input", View()),
            "mlp_output": (mlp, "output", View()),
        }
    )
    table["head_attention_value_output"] = (*t["attention_value_output"], View(n=H))
    d = cfg.hidden_size // H
    for slot, s in enumerate(("query", "key", "value")):
        path = qkv[s]
        if _fused_view(variant, model) is None:
            n = H if s == "query" else getattr(cfg, "num_key_value_heads", None) or H
            cols = None
        else:
            cols = _slot_cols(variant, model, model.get_submodule(path).weight.shape[0], slot)
            n = len(cols) // d
        table[f"{s}_output"] = (path, "output", View(cols))
        table[f"head_{s}_output"] = (path, "output", View(cols, n))
    return table


def _patch_view(view, pos, src_view, heads=None):
    """fn replacing the view's units at ``pos`` (and ``heads``) by ``src_view``'s."""

    def put(v):
        if heads is None:
            v[:, pos] = src_view[:, pos]
        else:
            v[:, heads, pos] = src_view[:, heads, pos]

    return lambda t: view.write(t, put)


def _cfg(comp, itype, unit="pos", layer=L, **kw):
    return pv.IntervenableConfig(
        representations=[pv.RepresentationConfig(layer=layer, component=comp, unit=unit, intervention_type=itype, **kw)]
    )


def _is_head(comp):
    return comp.startswith("head_")


def _loc(pos, heads=None):
    """One representation's locations, the same for every example: positions, or (heads, positions)."""
    return [[heads] * B, [pos] * B] if heads is not None else [pos] * B


def _ul(pos, heads=None):
    return {"sources->base": ([_loc(pos, heads)], [_loc(pos, heads)])}


# ------------------------------------------------------------------------------------- components


@pytest.mark.parametrize("variant", [p for f in FAMILIES for p in [f]])
@pytest.mark.parametrize("head", ["causal_lm", "seq_cls", "base"])
def test_spec_paths_exist_in_every_model_class(variant, head):
    """Every component's module exists in the base model, the LM and the sequence classifier."""
    model = make_tiny(VARIANTS[variant][0], head=head)
    fam, prefix = family_for(model)
    assert fam is not None and fam.name == VARIANTS[variant][0], type(model).__name__
    for comp, spec in fam.components.items():
        mod = model.get_submodule(prefix + spec.module.format(layer=L))  # AttributeError if the path is wrong
        assert isinstance(mod, torch.nn.Module), comp
    # the base model under the prefix is the family's base class
    base = model.get_submodule(prefix.rstrip(".")) if prefix else model
    assert type(base).__name__ in fam.prefixes and fam.prefixes[type(base).__name__] == ""


@pytest.mark.parametrize(
    "variant,head",
    [
        pytest.param(v, h, marks=cell(v, "components"), id=f"{v}-{h}")
        for v, h in (("gpt_neox", "seq_cls"), ("phi3", "base"))
        if v in FAMILIES
    ],
)
def test_base_model_and_classifier_collect_equals_hook(variant, head):
    """The base model (no prefix) and the sequence classifier: fused slots and blocks equal the hooks."""
    model = model_for(variant, head)
    lm = model_for(variant)
    prefix = {"gpt_neox": "gpt_neox.", "phi3": "model."}[variant]
    table = {
        c: (p[len(prefix) :] if head == "base" else p, port, v) for c, (p, port, v) in hand_table(variant, lm).items()
    }
    inputs = _inputs(13)
    comps = ["block_output", "head_query_output", "head_key_output", "value_output", "mlp_activation"]
    reps = [
        pv.RepresentationConfig(
            layer=L, component=c, unit="h.pos" if _is_head(c) else "pos", intervention_type=pv.CollectIntervention
        )
        for c in comps
    ]
    _, coll = pv.IntervenableModel(pv.IntervenableConfig(representations=reps), model)(base=inputs)
    for c, got in zip(comps, coll):
        path, port, view = table[c]
        store = []
        hooked(model, inputs, [(path, port, capture(store))])
        torch.testing.assert_close(got, view(store[0]), atol=0, rtol=0, msg=c)


@pytest.mark.parametrize(
    "variant", [v for v in ("gpt_neox", "falcon", "falcon_new", "falcon_classic", "phi3") if VARIANTS[v][0] in FAMILIES]
)
def test_fused_layouts_pick_the_columns_hf_reads(variant):
    """Each fused layout (Falcon's classic per-head layout included, which the traced tests do not build)
    picks, for q, k and v, the fused output's columns HF's code reads, head by head."""
    from types import SimpleNamespace

    from fxvene.graph.sites import fused_slot, slot_view, view_columns

    model = model_for(variant)
    fam, _ = family_for(model)
    table = hand_table(variant, model)
    for s in ("query", "key", "value"):
        path, _, view = table[f"{s}_output"]
        width = model.get_submodule(path).weight.shape[0]
        f = fused_slot(fam.components[f"{s}_output"], model.config, width, s)
        got = slot_view(torch.arange(width).view(1, 1, width), SimpleNamespace(fused=f))[0, 0]
        assert torch.equal(got, view.cols), (variant, s)
        assert view_columns(SimpleNamespace(fused=f), width) == view.cols.tolist()  # path patching's columns


@pytest.mark.parametrize("variant,frontend", _params("components", list(FAMILIES) + ["falcon_new"], with_frontend=True))
def test_collect_every_component_equals_hook(variant, frontend):
    model = model_for(variant)
    table = hand_table(variant, model)
    fam, _ = family_for(model)
    assert set(table) <= set(fam.components) and set(fam.components) - set(table) == {"attention_weight"}
    inputs = _inputs(11)
    comps = sorted(table)
    reps = [
        pv.RepresentationConfig(
            layer=L, component=c, unit="h.pos" if _is_head(c) else "pos", intervention_type=pv.CollectIntervention
        )
        for c in comps
    ]
    im = pv.IntervenableModel(pv.IntervenableConfig(representations=reps), model, tracer=frontend)
    _, coll = im(base=inputs)
    got = dict(zip(comps, coll))
    for c in comps:
        path, port, view = table[c]
        store = []
        hooked(model, inputs, [(path, port, capture(store))])
        ref = view(store[0])
        torch.testing.assert_close(got[c], ref, atol=0, rtol=0, msg=f"{variant} {c}")
    # attention_weight (eager): the attention probabilities, rows sum to 1, causal
    im = pv.IntervenableModel(_cfg("attention_weight", pv.CollectIntervention), model, tracer=frontend)
    _, (w,) = im(base=inputs)
    H = model.config.num_attention_heads if hasattr(model.config, "num_attention_heads") else model.config.num_heads
    assert w.shape == (B, H, S, S)
    torch.testing.assert_close(w.sum(-1), torch.ones(B, H, S))
    assert torch.all(w.triu(1) == 0)
    ref = model(**inputs, output_attentions=True).attentions[L]
    torch.testing.assert_close(w, ref.detach(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("variant", _params("components", ["gpt_neox", "falcon", "falcon_new", "phi3"]))
def test_fused_head_slices_equal_qkv_from_the_weights(variant):
    """head_{query,key,value}_output on a fused projection: the slices equal x @ W_q/k/v^T + b of the
    head's rows (the layout written out per family), and zeroing a head's value in fxvene zeroes
    exactly the attention-output columns of the query heads that read it (HF forward, hooked)."""
    model = model_for(variant)
    cfg = model.config
    table = hand_table(variant, model)
    path = table["query_output"][0]
    lin = model.get_submodule(path)
    H = cfg.num_attention_heads
    d = cfg.hidden_size // H
    if variant in ("gpt_neox", "falcon_classic"):
        rows = lambda slot, h: torch.arange(h * 3 * d + slot * d, h * 3 * d + (slot + 1) * d)  # noqa: E731
        KV = H
    elif variant == "falcon":
        KV = 1
        rows = lambda slot, h: torch.arange((H + slot - 1 if slot else h) * d, (H + slot - 1 if slot else h) * d + d)  # noqa: E731
    elif variant == "falcon_new":
        KV = cfg.num_kv_heads
        per = H // KV + 2

        def rows(slot, h):
            g, j = (h // (H // KV), h % (H // KV)) if slot == 0 else (h, H // KV + slot - 1)
            return torch.arange((g * per + j) * d, (g * per + j + 1) * d)
    else:  # phi3
        KV = cfg.num_key_value_heads
        rows = lambda slot, h: torch.arange(((0, H, H + KV)[slot] + h) * d, ((0, H, H + KV)[slot] + h + 1) * d)  # noqa: E731
    inputs = _inputs(12)
    store = []
    hooked(model, inputs, [(path, "input", capture(store))])
    x = store[0]
    comps = ["head_query_output", "head_key_output", "head_value_output"]
    reps = [
        pv.RepresentationConfig(layer=L, component=c, unit="h.pos", intervention_type=pv.CollectIntervention)
        for c in comps
    ]
    _, coll = pv.IntervenableModel(pv.IntervenableConfig(representations=reps), model)(base=inputs)
    for slot, got in enumerate(coll):
        n = H if slot == 0 else KV
        assert got.shape == (B, n, S, d)
        for h in range(n):
            r = rows(slot, h)
            ref = x @ lin.weight[r].T + (lin.bias[r] if lin.bias is not None else 0)
            torch.testing.assert_close(got[:, h], ref, atol=1e-6, rtol=1e-5)
    # semantics: zero kv head g's value -> the attention output of its query heads is 0, others unchanged
    g = KV - 1
    readers = [h for h in range(H) if h // (H // KV) == g]
    im = pv.IntervenableModel(_cfg("head_value_output", pv.ZeroIntervention, unit="h"), model)
    _, out = im(base=inputs, unit_locations={"base": [[[g]] * B]})
    avo = table["attention_value_output"][0]
    clean, zeroed = [], []
    hooked(model, inputs, [(avo, "input", capture(clean))])

    def zero_v(t):
        def put(v):
            v[:, g] = 0

        return table["head_value_output"][2].write(t, put)

    ref = hooked(model, inputs, [(path, "output", zero_v), (avo, "input", capture(zeroed))])
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-6, rtol=1e-5)
    z, c = head_view(zeroed[0], H), head_view(clean[0], H)
    for h in range(H):
        if h in readers:
            assert torch.all(z[:, h] == 0), h
        else:
            torch.testing.assert_close(z[:, h], c[:, h], atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------- interventions


@pytest.mark.parametrize("variant,frontend", _params("intervene", list(FAMILIES) + ["falcon_new"], with_frontend=True))
def test_vanilla_patch_every_component_equals_hooked_patch(variant, frontend):
    model = model_for(variant)
    table = hand_table(variant, model)
    base, src = _inputs(21), _inputs(22)
    pos = [1, 3]
    for c in sorted(table):
        path, port, view = table[c]
        store = []
        hooked(model, src, [(path, port, capture(store))])
        src_view = view(store[0])
        heads = [0, src_view.shape[1] - 1] if _is_head(c) else None
        unit = "h.pos" if heads is not None else "pos"
        ul = _ul(pos, heads)
        im = pv.IntervenableModel(_cfg(c, pv.VanillaIntervention, unit=unit), model, tracer=frontend)
        _, out = im(base, [src], unit_locations=ul)
        hs = None if heads is None else torch.tensor(heads)[:, None]
        ref = hooked(model, base, [(path, port, _patch_view(view, torch.tensor(pos), src_view, hs))])
        torch.testing.assert_close(out.logits, ref.logits, atol=1e-6, rtol=1e-5, msg=f"{variant} {c}")
        if c in ("block_output", "value_output"):  # the patch changes the output
            assert not torch.allclose(out.logits, hooked(model, base, []).logits)


@pytest.mark.parametrize("variant", _params("trainable", list(FAMILIES) + ["falcon_new"]))
def test_trainable_rotation_on_a_qkv_slot_equals_hook_and_backward(variant):
    """LowRankRotatedSpace on value_output (a fused slot where the family fuses): the same intervention
    module applied in an HF hook gives the same logits and the same gradient; one optimizer step."""
    model = model_for(variant)
    path, port, view = hand_table(variant, model)["value_output"]
    base, src = _inputs(31), _inputs(32)
    store = []
    hooked(model, src, [(path, port, capture(store))])
    src_v = view(store[0])
    width = src_v.shape[-1]
    torch.manual_seed(0)
    cfg = _cfg("value_output", pv.LowRankRotatedSpaceIntervention, low_rank_dimension=2)
    im = pv.IntervenableModel(cfg, model)
    iv = next(iter(im.interventions.values()))
    iv = iv[0] if isinstance(iv, (tuple, list)) else iv
    pos = 2
    _, out = im(base, [src], unit_locations=_ul([pos]))
    loss = out.logits[:, -1].logsumexp(-1).sum()
    loss.backward()
    params = [p for p in iv.parameters() if p.requires_grad]
    assert params and all(p.grad is not None for p in params)
    grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    assert iv.embed_dim == width if hasattr(iv, "embed_dim") else True

    def put(v):
        v[:, pos] = iv(v[:, pos].clone(), src_v[:, pos]).to(v.dtype)

    def fn(t):
        return view.write(t, put)

    handles = []
    mod = model.get_submodule(path)
    handles.append(mod.register_forward_hook(lambda m, a, o: fn(o)))
    try:
        ref = model(**base, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(out.logits.detach(), ref.logits.detach(), atol=1e-6, rtol=1e-5)
    ref.logits[:, -1].logsumexp(-1).sum().backward()
    for g0, p in zip(grads, params):
        torch.testing.assert_close(g0, p.grad, atol=1e-6, rtol=1e-4)
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=0.1)
    opt.step()
    opt.zero_grad()
    assert any(not torch.equal(b0, p) for b0, p in zip(before, params))
    model.zero_grad(set_to_none=True)


# ------------------------------------------------------------------------------------- sweeps


@pytest.mark.parametrize("variant", _params("patching_sweep"))
def test_patching_sweep_equals_hooked_cells(variant):
    model = model_for(variant)
    table = hand_table(variant, model)
    base, src = {"input_ids": _ids(41, 1)}, {"input_ids": _ids(42, 1)}
    toks = [3, 7]
    comps = ["block_output", "value_output"]
    r = patching_sweep(model, base, src, components=comps, tokens=toks, progress=False)
    assert r.values.shape == (2, 2, S, 1, 2)
    for ci, c in enumerate(comps):
        for layer in range(2):
            path, port, view = table[c]
            path = path.replace(f".{L}", f".{layer}", 1) if layer != L else path
            store = []
            hooked(model, src, [(path, port, capture(store))])
            sv = view(store[0])
            for pos in range(S):
                ref = hooked(model, base, [(path, port, _patch_view(view, pos, sv))]).logits[:, -1, toks]
                torch.testing.assert_close(r.values[ci, layer, pos], ref, atol=1e-5, rtol=1e-5)
    # a head sweep on the key heads (the fused key slot where the family fuses)
    path, port, view = table["head_key_output"]
    store = []
    hooked(model, src, [(path, port, capture(store))])
    sv = view(store[0])
    r = patching_sweep(
        model, base, src, components="head_key_output", layers=[L], positions=[1, 4], tokens=toks, progress=False
    )
    n_kv = sv.shape[1]
    assert r.values.shape == (1, 1, 2, n_kv, 1, 2)
    for pi, pos in enumerate([1, 4]):
        for h in range(n_kv):
            ref = hooked(model, base, [(path, port, _patch_view(view, pos, sv, h))]).logits[:, -1, toks]
            torch.testing.assert_close(r.values[0, 0, pi, h], ref, atol=1e-5, rtol=1e-5)


def _block(model, variant, layer):
    return hand_table(variant, model)["block_output"][0].replace(f".{L}", f".{layer}", 1)


@pytest.mark.parametrize("variant", _params("causal_trace"))
def test_causal_trace_equals_hooked_noise_and_restore(variant):
    model = model_for(variant)
    table = hand_table(variant, model)
    ids = _ids(51, 1, 6)
    subj, target, level, window = [1, 2], 5, 0.7, 2
    streams = ("block_output", "mlp_activation", "attention_output")
    r = causal_trace(
        model,
        {"input_ids": ids},
        subj,
        target,
        noise_level=level,
        n_samples=1,
        seed=1,
        window=window,
        streams=streams,
        progress=False,
    )
    assert r.probs.shape == (3, 6, 2)
    d = model.get_input_embeddings().weight.shape[1]
    noise = trace_noise(1, len(subj), d, 1)[0]

    def corrupt(t):
        t = t.clone()
        t[:, subj] = (t[:, subj].double() + noise * level).to(t.dtype)
        return t

    first = (_block(model, variant, 0), "input", corrupt)
    clean = {}
    for st in streams:
        for layer in range(2):
            path, port, _ = table[st]
            path = path.replace(f".{L}", f".{layer}", 1) if layer != L else path
            store = []
            hooked(model, {"input_ids": ids}, [(path, port, capture(store))])
            clean[st, layer] = (path, port, store[0])
    for si, st in enumerate(streams):
        for pos in range(6):
            for layer in range(2):
                lays = [layer] if st == "block_output" else window_layers(layer, window, 2)
                hooks = [first]
                for l2 in lays:
                    path, port, cv = clean[st, l2]

                    def restore(t, cv=cv):
                        t = t.clone()
                        t[:, pos] = cv[:, pos]
                        return t

                    hooks.append((path, port, restore))
                ref = torch.softmax(hooked(model, {"input_ids": ids}, hooks).logits[0, -1], -1)[target]
                assert abs(r.probs[si, pos, layer].item() - ref.item()) < 1e-5, (st, pos, layer)
    corrupted = torch.softmax(hooked(model, {"input_ids": ids}, [first]).logits[0, -1], -1)[target]
    assert abs(r.corrupted_prob - corrupted.item()) < 1e-5


# ------------------------------------------------------------------------------------- generation


GEN = dict(max_new_tokens=4, do_sample=False, eos_token_id=None, pad_token_id=2)


def _hf_generate_hooked(model, base, path, fn):
    calls = [0]

    def hook(m, a, out):
        k = calls[0]
        calls[0] += 1
        t = out[0] if isinstance(out, tuple) else out
        new = fn(k, t)
        if new is None:
            return None
        return (new,) + tuple(out[1:]) if isinstance(out, tuple) else new

    h = model.get_submodule(path).register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model.generate(**base, **GEN)
    finally:
        h.remove()


def _gen_check(variant, pad):
    model = model_for(variant)
    path = hand_table(variant, model)["mlp_output"][0]
    base = _inputs(61, pad=pad)
    vec = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(3)) * 2
    im = pv.IntervenableModel(_cfg("mlp_output", pv.AdditionIntervention), model)
    _, out = im.generate(base, source_representations=vec, intervene_on="all", unit_locations=None, **GEN)
    ref = _hf_generate_hooked(model, base, path, lambda k, t: t + vec)
    assert torch.equal(out, ref)
    with torch.no_grad():
        plain = model.generate(**base, **GEN)
    assert not torch.equal(out, plain)
    # decode-only steering (pyvene's default): the prompt forward is untouched
    _, out2 = im.generate(base, source_representations=vec, **GEN)
    ref2 = _hf_generate_hooked(model, base, path, lambda k, t: t + vec if k >= 1 else None)
    assert torch.equal(out2, ref2)


@pytest.mark.parametrize("variant", _params("generate"))
def test_generate_with_kv_cache_equals_hf_hooked_generate(variant):
    _gen_check(variant, pad=0)
    # the KV cache: decode forwards are one-token runs of the decode step graph (past keys/values as
    # inputs, two per layer), never the HF modules
    from fxvene.api import generation as G

    model = model_for(variant)
    assert G.step_graph(model, "decode").n_kv == 2 * 2
    im = pv.IntervenableModel(_cfg("block_output", pv.CollectIntervention), model)
    calls = []
    h = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        (_, col), _ = im.generate(_inputs(62), intervene_on="all", **GEN)
    finally:
        h.remove()
    assert calls == []
    d = model.config.hidden_size
    assert [tuple(t.shape) for t in col] == [(B, S, d)] + [(B, 1, d)] * (GEN["max_new_tokens"] - 1)


@pytest.mark.parametrize("variant", _params("left_padding"))
def test_left_padding_generate_and_patch_equal_hf(variant):
    _gen_check(variant, pad=2)
    model = model_for(variant)
    path, port, view = hand_table(variant, model)["block_output"]
    base, src = _inputs(71, pad=2), _inputs(72, pad=1)
    store = []
    hooked(model, src, [(path, port, capture(store))])
    im = pv.IntervenableModel(_cfg("block_output", pv.VanillaIntervention), model)
    _, out = im(base, [src], unit_locations=_ul([4]))
    ref = hooked(model, base, [(path, port, _patch_view(view, 4, store[0]))])
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-6, rtol=1e-5)
    # the un-intervened graph on a padded batch is HF's forward
    _, coll = pv.IntervenableModel(_cfg("block_output", pv.CollectIntervention), model)(base=base)
    st = []
    hooked(model, base, [(path, port, capture(st))])
    torch.testing.assert_close(coll[0], st[0], atol=0, rtol=0)


# ------------------------------------------------------------------------------------- graph, CLI


@pytest.mark.parametrize("variant,frontend", _params("graph_diff", with_frontend=True))
def test_unintervened_graph_equals_hf_and_graph_diff(variant, frontend):
    from fxvene.graph.tracing import trace

    model = model_for(variant)
    inputs = _inputs(81)
    traced = trace(model, ("input_ids", "attention_mask"), tracer=frontend)
    with torch.no_grad():
        got = traced.gm(**inputs)
        ref = model(**inputs, use_cache=False).logits
    got = got["logits"] if isinstance(got, dict) else (got.logits if hasattr(got, "logits") else got[0])
    assert torch.equal(got, ref)
    for comp in ("block_output", "query_output"):
        im = pv.IntervenableModel(_cfg(comp, pv.VanillaIntervention), model, tracer=frontend)
        d = im.graph_diff()
        assert sorted(d.added) == ["fxv_loc_0", "fxv_site_0", "fxv_src_0"]
        assert d.removed == []
        site = next(n for n in d.old.graph.nodes if n.name == im.sites()[0].node)
        assert set(d.rewired) == {u.name for u in site.users}
        for before, after in d.rewired.values():
            assert after == tuple("fxv_site_0" if a == site.name else a for a in before)


@pytest.mark.parametrize("variant", _params("cli"))
def test_cli_components_on_a_saved_model(variant, tmp_path):
    model = model_for(variant)
    by = cli_components(model, tmp_path, L)
    table = hand_table(variant, model)
    assert set(table) <= set(by)
    ex = {"input_ids": _ids(91, 2, 8), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    store = {}
    hooked(model, ex, [(path, port, capture(store, c)) for c, (path, port, _) in table.items()])
    for c, (path, _port, view) in table.items():
        assert tuple(by[c]["view"]) == tuple(view(store[c]).shape), c
        assert by[c]["module"] == path, c


# ------------------------------------------------------------------------------------- pyvene 0.1.8


PYVENE_FAMILIES = [f for f in ("gpt_neo", "gpt_neox") if f in FAMILIES]


@pytest.mark.parametrize("variant", _params("pyvene_diff", PYVENE_FAMILIES))
def test_every_component_pyvene_maps_equals_pyvene(variant):
    """Collect and Vanilla against pyvene 0.1.8 for every component its map resolves (GPT-Neo's q/k/v and
    attention-value paths do not exist in pyvene's map: those are compared with pyvene's string
    components on the right module)."""
    pyvene = pytest.importorskip("pyvene")
    model = model_for(variant)
    pmodel = make_tiny(VARIANTS[variant][0], **VARIANTS[variant][1])  # pyvene removes the hooks of a model it wraps
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), pmodel.state_dict().values()))
    # with attention masks: the forward graph the other tests of the family traced serves these calls too
    base, src = _inputs(101), _inputs(102)
    if variant == "gpt_neo":
        mapped = [
            "block_input",
            "block_output",
            "mlp_activation",
            "mlp_output",
            "mlp_input",
            "attention_output",
            "attention_input",
        ]
        strings = {
            c: f"transformer.h[{L}].attn.attention.{m}"
            for c, m in (
                ("query_output", "q_proj.output"),
                ("key_output", "k_proj.output"),
                ("value_output", "v_proj.output"),
                ("attention_value_output", "out_proj.input"),
            )
        }
    else:
        mapped = [
            "block_input",
            "block_output",
            "mlp_activation",
            "mlp_output",
            "mlp_input",
            "attention_value_output",
            "head_attention_value_output",
            "attention_output",
            "attention_input",
        ]
        strings = {}
    pos = [1, 3]
    for c in mapped + list(strings):
        pcomp = strings.get(c, c)
        head = _is_head(c)
        unit = "h.pos" if head else "pos"
        loc = _loc(pos, [0, 3] if head else None)
        # collect (pyvene is right for Collect with max_number_of_units = the number of units)
        prep = pyvene.RepresentationConfig(
            L, pcomp, unit, max_number_of_units=2, intervention_type=pyvene.CollectIntervention
        )
        pim = pyvene.IntervenableModel(pyvene.IntervenableConfig([prep]), pmodel)
        (_, p_coll), _ = pim(base=base, unit_locations={"base": [loc]})
        im = pv.IntervenableModel(_cfg(c, pv.CollectIntervention, unit=unit), model)
        _, coll = im(base=base, unit_locations={"base": [loc]})
        torch.testing.assert_close(coll[0], p_coll[0], atol=1e-6, rtol=1e-5, msg=c)
        # vanilla
        ul = _ul(pos, [0, 3] if head else None)
        prep = pyvene.RepresentationConfig(L, pcomp, unit)
        pim = pyvene.IntervenableModel(pyvene.IntervenableConfig([prep]), pmodel)
        _, pout = pim(base, [src], unit_locations=ul)
        im = pv.IntervenableModel(_cfg(c, pv.VanillaIntervention, unit=unit), model)
        _, out = im(base, [src], unit_locations=ul)
        torch.testing.assert_close(out.logits, pout.logits, atol=1e-6, rtol=1e-5, msg=c)


# ------------------------------------------------------------------------------------- errors


def test_fused_layout_that_does_not_fit_is_a_clear_error():
    """A fused q/k/v output whose width does not hold the config's query heads plus equal k/v parts
    (a config that lies about the head count) is a ValueError naming the component, never a wrong slice."""
    if "gpt_neox" not in FAMILIES:
        pytest.skip("GPT-NeoX not on this line")
    model = model_for("gpt_neox")  # traced already (the graph is cached per model): only the spec check runs
    model.config.num_attention_heads = 3  # the weights hold 4 heads of 8; 96 columns are no heads of 32 // 3
    try:
        with pytest.raises(ValueError, match=r"head_query_output.*96 wide does not split into heads of 10"):
            pv.IntervenableModel(_cfg("head_query_output", pv.CollectIntervention, unit="h"), model)
    finally:
        model.config.num_attention_heads = 4


def test_attention_weight_behind_a_reshape_says_why_not_eager():
    """Falcon's ALiBi attention (eager) reshapes the probabilities between the softmax and the matmul with the
    values (softmax -> dropout -> view -> matmul): attention_weight is refused with that reason, not with
    "needs eager" (the model is eager). A toy module with that tail stands in for Falcon-ALiBi (an export of
    the real model costs seconds per line); a fused kernel (no softmax at all) still says it needs eager."""
    from fxvene.passes import locate

    class Attn(torch.nn.Module):
        def __init__(self, reshape):
            super().__init__()
            self.reshape, self.drop = reshape, torch.nn.Dropout(0.0)

        def forward(self, q, k, v):
            if self.reshape is None:
                return torch.nn.functional.scaled_dot_product_attention(q, k, v)
            p = self.drop(torch.softmax(q @ k.transpose(-1, -2), -1))
            return (p.view(*p.shape) if self.reshape else p) @ v

    class Toy(torch.nn.Module):
        def __init__(self, reshape):
            super().__init__()
            self.attn = Attn(reshape)

        def forward(self, x):
            return self.attn(x, x, x)

    x = torch.randn(1, 2, 3, 4)
    graphs = {r: torch.export.export(Toy(r).eval(), (x,)).module() for r in (False, True, None)}
    assert locate.attention_probs(graphs[False], "attn").target in (
        torch.ops.aten.softmax.int,
        torch.ops.aten._softmax.default,
    )
    with pytest.raises(locate.LocateError, match=r"'view' after .*Falcon's ALiBi") as e:
        locate.attention_probs(graphs[True], "attn")
    assert "needs eager" not in str(e.value)
    with pytest.raises(locate.LocateError, match=r"no softmax in this module: attention_weight needs eager"):
        locate.attention_probs(graphs[None], "attn")
