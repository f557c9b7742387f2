"""Llama, Mistral, Qwen2, Gemma, Gemma 2, Gemma 3 (text), OLMo, OLMo 2, Qwen3, Granite, Mixtral and Qwen2-MoE (the families with
separate q/k/v projections, issue 12): every component and every feature on a tiny random config per family,
plus the sliding-window generation of Mistral and Gemma 2/3 (window 4, prompts longer than it).

Oracles: forward hooks on the HF modules, written here from each family's HF code (module paths, the
(batch, seq, heads, head_dim) layout of the projections); HF's attention probabilities
(``output_attentions=True``); HF's own forward and greedy ``generate`` (left-padded rows: HF's generate of the
row alone, see test_left_padding); pyvene 0.1.8 for Llama, Mistral, Qwen2, Gemma, Gemma 2 and OLMo. Never fxvene itself.
Every family is traced with torch.export: transformers 4.47's fx tracer does not support these families
(Mixtral and Qwen2-MoE it traces to wrong logits, which fxvene's output check refuses).
"""

import numpy as np
import pytest
import torch
import transformers
from _hooks import capture, cli_components, collect_config, head_view, hooks
from _matrix import cell
from _tiny import AVAILABLE, make_tiny

import fxvene as pv
from fxvene.models import family_for

FAMILIES = [
    f
    for f in (
        "llama",
        "mistral",
        "qwen2",
        "gemma",
        "gemma2",
        "gemma3_text",
        "olmo",
        "olmo2",
        "qwen3",
        "granite",
        "mixtral",
        "qwen2_moe",
    )
    if f in AVAILABLE
]
SLIDING = [f for f in ("mistral", "gemma2", "gemma3_text") if f in AVAILABLE]  # tiny sliding_window = 4
PYVENE_FAMILIES = ["llama", "mistral", "qwen2", "gemma", "gemma2", "olmo"]
TF5 = int(transformers.__version__.split(".")[0]) >= 5
L = 1  # the layer the component checks use (of 2)
B, S = 2, 7
VOCAB = 64
GEN = dict(max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=2)


def _params(feature, families=None):
    return [pytest.param(f, marks=cell(f, feature), id=f) for f in (FAMILIES if families is None else families)]


_MODELS = {}


def model_for(family, head="causal_lm"):
    if (family, head) not in _MODELS:
        _MODELS[family, head] = make_tiny(family, head=head)
    return _MODELS[family, head]


def _ids(seed, b=B, s=S):
    return torch.randint(3, VOCAB, (b, s), generator=torch.Generator().manual_seed(seed))


def _inputs(seed, b=B, s=S, pad=0):
    ids = _ids(seed, b, s)
    mask = torch.ones_like(ids)
    if pad:
        ids[0, :pad] = 2
        mask[0, :pad] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _cfg(component, itype, layer=L, unit="pos", **kw):
    return pv.IntervenableConfig(
        representations=[
            pv.RepresentationConfig(layer=layer, component=component, unit=unit, intervention_type=itype, **kw)
        ]
    )


# ------------------------------------------------------------------------------------- the hand-written oracle


def hand_table(model, layer=L):
    """component -> (module path, port, heads): written from the HF modeling code, not from fxvene's specs.
    ``heads``: the config attribute that splits the last dim into heads (q: attention heads, k/v: kv heads)."""
    moe = "block_sparse_moe" if type(model).__name__.startswith("Mixtral") and not TF5 else "mlp"
    base = "" if type(model).__name__.endswith("Model") else "model."
    lay = f"{base}layers.{layer}"
    attn = f"{lay}.self_attn"
    t = {
        "block_input": (lay, "input", None),
        "block_output": (lay, "output", None),
        "mlp_activation": (f"{lay}.mlp.act_fn", "output", None),
        "mlp_output": (f"{lay}.{moe}", "output", None),
        "mlp_input": (f"{lay}.{moe}", "input", None),
        "attention_value_output": (f"{attn}.o_proj", "input", None),
        "head_attention_value_output": (f"{attn}.o_proj", "input", "num_attention_heads"),
        "attention_output": (attn, "output", None),
        "attention_input": (attn, "input", None),
        "query_output": (f"{attn}.q_proj", "output", None),
        "key_output": (f"{attn}.k_proj", "output", None),
        "value_output": (f"{attn}.v_proj", "output", None),
        "head_query_output": (f"{attn}.q_proj", "output", "num_attention_heads"),
        "head_key_output": (f"{attn}.k_proj", "output", "num_key_value_heads"),
        "head_value_output": (f"{attn}.v_proj", "output", "num_key_value_heads"),
    }
    if model.config.model_type in ("mixtral", "qwen2_moe"):
        del t["mlp_activation"]  # experts have their own activations; no single module
    return t


# ------------------------------------------------------------------------------------- specs and components


@pytest.mark.parametrize("family", _params("components"))
def test_spec_paths_for_every_head_class(family):
    """Each head class of the family (base model, causal LM, sequence classifier where transformers has one)
    maps to the family's spec, and every component's module exists at the hand-written path."""
    heads = ["causal_lm", "base", "seq_cls"]
    seen = 0
    for head in heads:
        try:
            model = model_for(family, head)
        except ValueError:
            continue  # transformers has no such head for this family on this line (OLMo/Granite classifiers)
        seen += 1
        fam, prefix = family_for(model)
        assert fam is not None and not getattr(fam, "derived", False), type(model).__name__
        table = hand_table(model)
        assert set(fam.components) == set(table) | {"attention_weight"}
        for comp, (path, port, _) in table.items():
            spec = fam.components[comp]
            assert prefix + spec.module.format(layer=L) == path and spec.port == port, (head, comp)
            model.get_submodule(path)
    assert seen >= 2


@pytest.mark.parametrize("family", _params("components", ["mixtral"]))
def test_sequence_classifier_sites_equal_hooks(family):
    """A sequence classifier (one family, for time: the head's prefix is checked for every family above): its logits
    (pooled at each row's last non-pad token) equal HF's, and components collect the hooked tensors."""
    model = model_for(family, "seq_cls")
    comps = ["block_output", "head_query_output", "mlp_output"]
    cfg = collect_config([(c, L) for c in comps])
    inputs = _inputs(13)
    inputs["input_ids"][0, -2:] = model.config.pad_token_id  # right padding: pooled before the pads
    inputs["attention_mask"][0, -2:] = 0
    (orig, collected), _ = pv.IntervenableModel(cfg, model)(base=inputs, output_original_output=True)
    table = hand_table(model)
    store = {}
    with hooks(model, [(table[c][0], table[c][1], capture(store, c)) for c in comps]), torch.no_grad():
        ref = model(**inputs).logits
    for c, got in zip(comps, collected):
        want = store[c] if table[c][2] is None else head_view(store[c], getattr(model.config, table[c][2]))
        assert torch.equal(got, want), c
    torch.testing.assert_close(orig.logits, ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("family", _params("components"))
def test_spec_widths_are_the_tensors_widths(family):
    """pyvene's per-unit widths from the spec (what trainable interventions are built with) equal the hooked
    tensors' widths, on a config whose head_dim is not hidden/heads (Gemma 7B, Qwen3) where the family
    honours head_dim, and GQA k/v widths."""
    from fxvene.models import eval_dim

    model = make_tiny(family, head_dim=16)
    if model.get_submodule(f"model.layers.{L}.self_attn.q_proj").out_features != 16 * model.config.num_attention_heads:
        model = model_for(family)  # the family computes head_dim as hidden / heads
    fam, _ = family_for(model)
    table = hand_table(model)
    store = {}
    with hooks(model, [(p, port, capture(store, c)) for c, (p, port, _) in table.items()]), torch.no_grad():
        model(**_inputs(12))
    for c, (_, _, heads) in table.items():
        width = store[c].shape[-1] // (getattr(model.config, heads) if heads else 1)
        assert eval_dim(fam.components[c].dim, model.config) == width, c


@pytest.mark.parametrize("family", _params("components"))
def test_collect_every_component_equals_hooks(family):
    """One forward collects every component at both layers (whole activations; layer 0 of Gemma 2/3 is a
    sliding-window layer); each equals the HF module's hooked tensor (head views: (b, heads, s, head_dim));
    attention_weight equals HF's attention probabilities (eager)."""
    model = model_for(family)
    sites = [(c, layer) for layer in (0, 1) for c in list(hand_table(model, layer)) + ["attention_weight"]]
    cfg = collect_config(sites)
    im = pv.IntervenableModel(cfg, model)
    inputs = _inputs(11, pad=2)
    (_, collected), _ = im(base=inputs)
    store = {}
    specs = [
        (p, port, capture(store, (c, layer)))
        for layer in (0, 1)
        for c, (p, port, _) in hand_table(model, layer).items()
    ]
    with hooks(model, specs), torch.no_grad():
        ref = model(**inputs, output_attentions=True)
    for (c, layer), got in zip(sites, collected):
        if c == "attention_weight":
            want = ref.attentions[layer]
        else:
            want = store[c, layer]
            heads = hand_table(model, layer)[c][2]
            if heads is not None:
                want = head_view(want, getattr(model.config, heads))
        assert torch.equal(got, want), (c, layer)


def _patch(x, src, base_locs, src_locs, n_heads=None, heads=None):
    """Vanilla by hand: base units <- source units (pos: positions; h.pos: heads x positions)."""
    x = x.clone()
    for i in range(x.shape[0]):
        if n_heads is None:
            x[i, base_locs[i]] = src[i, src_locs[i]]
        else:
            xv, sv = head_view(x, n_heads), head_view(src, n_heads)  # xv is a view of x
            bh, sh = heads
            for hb, hs in zip(bh[i], sh[i]):
                for pb, ps in zip(base_locs[i], src_locs[i]):
                    xv[i, hb, pb] = sv[i, hs, ps]
    return x


@pytest.mark.parametrize("family", _params("intervene"))
def test_vanilla_patch_every_component_equals_hooked_patch(family):
    """Vanilla at every component (pos units; heads x positions for head components) gives the logits of
    the HF model with a hook that copies the source's units into the base run."""
    model = model_for(family)
    table = hand_table(model)
    base, src = _inputs(21, pad=1), _inputs(22)
    bpos, spos = [[1, 3], [0, 4]], [[2, 3], [5, 0]]
    bh, sh = [[0, 1], [1, 0]], [[1, 0], [0, 1]]
    for c, (path, port, heads) in table.items():
        if heads is None:
            locs = {"sources->base": ([spos], [bpos])}
            unit = "pos"
        else:
            locs = {"sources->base": ([[sh, spos]], [[bh, bpos]])}
            unit = "h.pos"
        im = pv.IntervenableModel(_cfg(c, pv.VanillaIntervention, unit=unit, max_number_of_units=2), model)
        _, out = im(base=base, sources=[src], unit_locations=locs)
        store = {}
        with hooks(model, [(path, port, capture(store, "s"))]), torch.no_grad():
            model(**src)
        n = getattr(model.config, heads) if heads else None
        with hooks(model, [(path, port, lambda x: _patch(x, store["s"], bpos, spos, n, (bh, sh)))]), torch.no_grad():
            ref = model(**base).logits
        torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=1e-5, msg=lambda m: f"{c}: {m}")


@pytest.mark.parametrize("family", _params("intervene", [f for f in ("mixtral", "qwen2_moe") if f in FAMILIES]))
def test_moe_router_and_experts_by_string_component(family):
    """The MoE parts are string components: the routed experts' output (transformers 4: one expert, on its
    tokens; 5: the fused experts module) and, on transformers 4, the router logits; Qwen2-MoE's shared
    expert. On transformers 5 the router returns (logits, weights, indices): its output is refused by name."""
    model = model_for(family)
    moe = "block_sparse_moe" if family == "mixtral" and not TF5 else "mlp"
    lay = f"model.layers.{L}.{moe}"
    parts = [f"{lay}.experts" if TF5 else f"{lay}.experts.1"]
    if not TF5:
        parts.append(f"{lay}.gate")
    if family == "qwen2_moe":
        parts += [f"{lay}.shared_expert", f"{lay}.shared_expert_gate"]
    inputs = _inputs(31)
    for path in parts:
        comp = path.replace(f".layers.{L}.", f".layers[{L}].") + ".output"
        im = pv.IntervenableModel(_cfg(comp, pv.CollectIntervention), model)
        (_, got), _ = im(base=inputs)
        store = {}
        with hooks(model, [(path, "output", capture(store, "x"))]), torch.no_grad():
            model(**inputs)
        assert torch.equal(got[0], store["x"]), comp
    if TF5:
        with pytest.raises(ValueError, match="resolves to 2 nodes"):
            pv.IntervenableModel(_cfg(f"model.layers[{L}].mlp.gate.output", pv.CollectIntervention), model)(base=inputs)


# ------------------------------------------------------------------------------------- trainable


@pytest.mark.parametrize("family", _params("trainable"))
def test_low_rank_rotation_trains_like_a_hooked_model(family):
    """LowRankRotatedSpace at block_output: the loss and the gradient of its rotation equal those of the HF
    model with a hook that applies the same intervention module at the same positions; a step changes it."""
    model = model_for(family)
    d = model.config.hidden_size
    im = pv.IntervenableModel(_cfg("block_output", pv.LowRankRotatedSpaceIntervention, low_rank_dimension=2), model)
    iv = next(iter(im.interventions.values()))
    iv = iv[0] if isinstance(iv, tuple) else iv
    base, src = _inputs(41, pad=1), _inputs(42)
    bpos, spos = [[4], [6]], [[3], [2]]
    labels = torch.tensor([5, 9])
    _, out = im(base=base, sources=[src], unit_locations={"sources->base": ([spos], [bpos])})
    loss = torch.nn.functional.cross_entropy(out.logits[:, -1], labels)
    params = [p for p in iv.parameters() if p.requires_grad]  # the orthogonal parametrization's original
    assert params
    g = torch.autograd.grad(loss, params)

    store = {}
    path = hand_table(model)["block_output"][0]
    with hooks(model, [(path, "output", capture(store, "s"))]), torch.no_grad():
        model(**src)

    def apply(x):
        bi = torch.arange(B)[:, None]
        b_units = x[bi, torch.tensor(bpos)].reshape(B, d)
        s_units = store["s"][bi, torch.tensor(spos)].reshape(B, d)
        new = iv(b_units, s_units).reshape(B, 1, d)
        y = x.clone()
        y[bi, torch.tensor(bpos)] = new
        return y

    with hooks(model, [(path, "output", apply)]):
        ref = model(**base).logits
    ref_loss = torch.nn.functional.cross_entropy(ref[:, -1], labels)
    g_ref = torch.autograd.grad(ref_loss, params)
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-5)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    assert sum(float(a.abs().sum()) for a in g) > 0
    before = iv.rotate_layer.weight.detach().clone()
    opt = torch.optim.SGD(params, lr=0.5)
    opt.zero_grad()
    _, out = im(base=base, sources=[src], unit_locations={"sources->base": ([spos], [bpos])})
    torch.nn.functional.cross_entropy(out.logits[:, -1], labels).backward()
    opt.step()
    assert not torch.equal(before, iv.rotate_layer.weight.detach())


# ------------------------------------------------------------------------------------- sweeps


def _streams(model):
    return (
        "block_output",
        "attention_output",
        "mlp_output" if "mlp_activation" not in hand_table(model) else "mlp_activation",
    )


@pytest.mark.parametrize("family", _params("patching_sweep"))
def test_patching_sweep_with_causal_prefix_equals_hooked_patches(family):
    """patching_sweep (on the chunk step graph: prefix=True insists on it) equals one hooked HF forward per
    cell (the source's unit at position p copied into the base at p; last-position logits)."""
    model = model_for(family)
    table = hand_table(model)
    base, src = _ids(51, 1, 6), _ids(52, 1, 6)
    comps = _streams(model)
    res = pv.patching_sweep(
        model, {"input_ids": base}, {"input_ids": src}, components=comps, layers=[0, 1], prefix=True
    )
    for ci, c in enumerate(comps):
        for li in (0, 1):
            path, port, _ = hand_table(model, li)[c]
            store = {}
            with hooks(model, [(path, port, capture(store, "s"))]), torch.no_grad():
                model(input_ids=src)
            for p in range(6):

                def put(x, p=p):
                    y = x.clone()
                    y[:, p] = store["s"][:, p]
                    return y

                with hooks(model, [(path, port, put)]), torch.no_grad():
                    ref = model(input_ids=base).logits[:, -1]
                torch.testing.assert_close(
                    res.values[ci, li, p], ref, atol=1e-4, rtol=1e-4, msg=lambda m: f"{c} layer {li} position {p}: {m}"
                )
    assert table  # the table covers the streams


@pytest.mark.parametrize("family", _params("causal_trace"))
def test_causal_trace_with_causal_prefix_equals_hooked_restores(family):
    """ROME causal tracing (noise on the subject's block-0 input, clean state restored per stream, position
    and layer window) equals hooked HF forwards; the chunk step graph's causal prefix is used (prefix=True)."""
    model = model_for(family)
    ids = _ids(61, 1, 6)
    subj, n_samples, level, window, target = [1, 2], 3, 0.5, 2, 7
    streams = _streams(model)
    res = pv.causal_trace(
        model,
        {"input_ids": ids},
        subject_positions=subj,
        target_token=target,
        noise_level=level,
        n_samples=n_samples,
        streams=streams,
        window=window,
        prefix=True,
    )
    d = model.config.hidden_size
    noise = torch.from_numpy(np.random.RandomState(1).randn(n_samples, len(subj), d))  # ROME / pyvene's draw
    n_layers = model.config.num_hidden_layers

    def noisy(x):
        y = x.clone()
        y[:, subj] = (x[:, subj].double() + noise * level).to(x.dtype)
        return y

    clean = {}
    specs = [
        (hand_table(model, l)[st][0], hand_table(model, l)[st][1], capture(clean, (st, l)))
        for st in streams
        for l in range(n_layers)
    ]
    with hooks(model, specs), torch.no_grad():
        model(input_ids=ids)
    rows = ids.expand(n_samples, -1)
    first = hand_table(model, 0)["block_input"][0]
    for si, st in enumerate(streams):
        for p in range(6):
            for l in range(n_layers):
                lays = (
                    [l]
                    if st == "block_output"
                    else list(range(max(0, l - window // 2), min(n_layers, l - (-window // 2))))
                )
                specs = [(first, "input", noisy)]
                for ll in lays:
                    path, port, _ = hand_table(model, ll)[st]

                    def restore(x, key=(st, ll), p=p):
                        y = x.clone()
                        y[:, p] = clean[key][:, p]
                        return y

                    specs.append((path, port, restore))
                with hooks(model, specs), torch.no_grad():
                    prob = torch.softmax(model(input_ids=rows).logits[:, -1].float(), -1)[:, target].mean()
                assert abs(float(res.probs[si, p, l]) - float(prob)) < 1e-5, (st, p, l)


# ------------------------------------------------------------------------------------- generation


def _prompt(seed, b=2, s=9):
    return {"input_ids": _ids(seed, b, s), "attention_mask": torch.ones(b, s, dtype=torch.long)}


@pytest.mark.parametrize("family", _params("generate", FAMILIES + [f for f in SLIDING if f not in FAMILIES]))
def test_generate_equals_hf_generate_plain_and_hooked(family):
    """Greedy generation with the KV-cache graphs (prompts of 9 tokens: longer than the sliding window of 4
    where the family has one): with only a collector active, HF's generate; with an Addition at block 0's
    output on every forward (prompt and each new token), HF's generate with the same hook."""
    model = model_for(family)
    base = _prompt(71)
    im = pv.IntervenableModel(_cfg("block_output", pv.CollectIntervention, layer=0), model)
    (_, collected), seq = im.generate(base, intervene_on="prompt", **GEN)
    with torch.no_grad():
        ref = model.generate(**base, **GEN)
    assert torch.equal(seq, ref)
    store = {}
    path = hand_table(model, 0)["block_output"][0]
    with hooks(model, [(path, "output", capture(store, "x"))]), torch.no_grad():
        model(**base)
    assert torch.equal(collected[0], store["x"])

    vec = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(3)) * 3
    im = pv.IntervenableModel(_cfg("block_output", pv.AdditionIntervention, layer=0), model)
    _, seq = im.generate(base, source_representations=vec, intervene_on_prompt=True, unit_locations=None, **GEN)
    with hooks(model, [(path, "output", lambda x: x + vec)]), torch.no_grad():
        ref = model.generate(**base, **GEN)
    assert torch.equal(seq, ref)
    assert not torch.equal(seq[:, 9:], model.generate(**base, **GEN)[:, 9:])  # the steering changes the text


@pytest.mark.parametrize("family", _params("left_padding", FAMILIES + [f for f in SLIDING if f not in FAMILIES]))
def test_left_padding(family):
    """A left-padded batch gives each row what the row gives alone: generate (HF's generate of the row alone:
    transformers 4.47's Gemma 2 generate itself goes wrong for left-padded rows once its rolling sliding-window
    cache wraps, it masks cache slots by the padding's original indices) and an intervened forward (HF's
    hooked forward of the row alone)."""
    model = model_for(family)
    pad = 3
    base = _prompt(81)
    base["input_ids"][0, :pad] = 2
    base["attention_mask"][0, :pad] = 0
    im = pv.IntervenableModel(_cfg("block_output", pv.CollectIntervention, layer=0), model)
    _, seq = im.generate(base, intervene_on="prompt", **GEN)
    for i, start in ((0, pad), (1, 0)):
        with torch.no_grad():
            alone = model.generate(input_ids=base["input_ids"][i : i + 1, start:], **GEN)
        assert torch.equal(seq[i, start:], alone[0]), i

    vec = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(4))
    im = pv.IntervenableModel(_cfg("attention_output", pv.AdditionIntervention), model)
    _, out = im(base=base, source_representations=vec, unit_locations={"base": [[[8], [8]]]})
    path = hand_table(model)["attention_output"][0]

    def add_last(x):
        y = x.clone()
        y[:, -1] = y[:, -1] + vec
        return y

    with hooks(model, [(path, "output", add_last)]), torch.no_grad():
        ref = model(input_ids=base["input_ids"][:1, pad:]).logits
    torch.testing.assert_close(out.logits[0, pad:], ref[0], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------- graph, CLI


@pytest.mark.parametrize("family", _params("graph_diff"))
def test_unintervened_graph_equals_hf_and_graph_diff(family):
    from fxvene.graph.tracing import trace

    model = model_for(family)
    inputs = _inputs(91, pad=2)
    traced = trace(model, ("input_ids", "attention_mask"), tracer="export")
    with torch.no_grad():
        got = traced.gm(**inputs)
        ref = model(**inputs, use_cache=False).logits
    got = got["logits"] if isinstance(got, dict) else (got.logits if hasattr(got, "logits") else got[0])
    assert torch.equal(got, ref)
    for comp in ("block_output", "head_query_output"):
        im = pv.IntervenableModel(_cfg(comp, pv.VanillaIntervention, unit="h" if "head" in comp else "pos"), model)
        d = im.graph_diff()
        assert sorted(d.added) == ["fxv_loc_0", "fxv_site_0", "fxv_src_0"]
        assert d.removed == []
        site = next(n for n in d.old.graph.nodes if n.name == im.sites()[0].node)
        path = hand_table(model)[comp][0]
        assert path in site.meta["nn_module_stack"].__repr__() or any(
            path in str(v) for v in site.meta["nn_module_stack"].values()
        )
        assert set(d.rewired) == {u.name for u in site.users}


@pytest.mark.parametrize("family", _params("cli"))
def test_cli_components_on_a_saved_model(family, tmp_path):
    model = model_for(family)
    by = cli_components(model, tmp_path, L)
    table = hand_table(model)
    ex = {"input_ids": _ids(92, 2, 8), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    store = {}
    with hooks(model, [(p, port, capture(store, c)) for c, (p, port, _) in table.items()]), torch.no_grad():
        model(**ex)
    for c, (path, _port, heads) in table.items():
        want = store[c] if heads is None else head_view(store[c], getattr(model.config, heads))
        assert by[c]["module"] == path, c
        assert tuple(by[c]["view"]) == tuple(want.shape), c
    # the CLI loads the directory as a user's code does (SDPA attention): attention_weight says what it needs
    aw = by["attention_weight"]
    assert (aw["error"] is not None and "eager" in aw["error"]) or tuple(aw["view"]) == (2, 4, 8, 8)


# ------------------------------------------------------------------------------------- pyvene 0.1.8


@pytest.mark.parametrize("family", _params("pyvene_diff", [f for f in PYVENE_FAMILIES if f in FAMILIES]))
def test_every_component_equals_pyvene(family):
    """Vanilla (pos units; h units for heads) and Collect at every component pyvene 0.1.8 maps, against pyvene
    on an identical model. pyvene's Gemma map names a config attribute that does not exist for
    head_value_output ("hhead_dim"): pyvene crashes there; that component is checked by hooks above. pyvene's
    Qwen2 map reads ``config.head_dim``, which Qwen2Config does not have: pyvene's copy of the model gets it
    (the value the model uses)."""
    pyvene = pytest.importorskip("pyvene")
    model = model_for(family)
    pmodel = make_tiny(family)  # pyvene removes the forward hooks of a model it wraps
    if getattr(pmodel.config, "head_dim", None) is None:  # pyvene's Qwen2 map reads config.head_dim, which
        pmodel.config.head_dim = pmodel.config.hidden_size // pmodel.config.num_attention_heads  # Qwen2Config lacks
    # with attention masks: the forward graph the other tests of the family traced serves these calls too
    base, src = _inputs(101), _inputs(102)
    comps = [c for c in hand_table(model) if not (family == "gemma" and c == "head_value_output")]
    for c in comps:
        unit = "h" if c.startswith("head_") else "pos"
        locs = ([[[1], [0]]], [[[0], [1]]]) if unit == "h" else ([[[1, 3], [2, 5]]], [[[1, 3], [0, 4]]])
        n = 1 if unit == "h" else 2
        for lib, m in ((pv, model), (pyvene, pmodel)):
            im = lib.IntervenableModel(_cfg(c, lib.VanillaIntervention, unit=unit, max_number_of_units=n), m)
            _, out = im(base=base, sources=[src], unit_locations={"sources->base": locs})
            if lib is pv:
                ours = out.logits
        torch.testing.assert_close(ours, out.logits, atol=1e-5, rtol=1e-5, msg=lambda m: f"Vanilla {c}: {m}")
        got = {}
        for lib, m in ((pv, model), (pyvene, pmodel)):
            im = lib.IntervenableModel(_cfg(c, lib.CollectIntervention, unit=unit, max_number_of_units=n), m)
            res = im(base=base, unit_locations={"base": locs[1]})
            got[lib] = res[0][-1][0]
        torch.testing.assert_close(got[pv], got[pyvene], atol=1e-6, rtol=1e-6, msg=lambda m: f"Collect {c}: {m}")
