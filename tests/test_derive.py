"""Derived component specs (models/derive.py): a model whose class no spec names gets one read off
its module tree and config.

The oracle for the derivation is the hand-written specs: for every family registered in
``fxvene.models`` and available on this transformers line, the spec derived with the hand spec out
of sight equals the hand one, component by component (module path with its prefix, port, views,
dimensions and head counts evaluated on the model's config). A family with no file works end to
end: a Vanilla patch through a derived component equals the same patch written as a forward hook.
"""

import dataclasses

import pytest
import torch
import transformers
from _matrix import cell
from _tiny import AVAILABLE, COMMON, LLAMA_LIKE, make_tiny
from transformers import AutoConfig, AutoModelForCausalLM

import fxvene as pv
from fxvene.cli import app as cli
from fxvene.models import derive, eval_dim, families, family_for, hand_family_for

_HEAD_MAPS = {
    "causal_lm": transformers.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    "seq_cls": transformers.models.auto.modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    "base": transformers.models.auto.modeling_auto.MODEL_MAPPING_NAMES,
}


def _registered():
    """(model_type, head) pairs whose model class a hand spec in fxvene.models names, on this line."""
    named = {cls for fam in families() for cls in fam.prefixes}
    out = []
    for mt in AVAILABLE:
        heads = [h for h, names in _HEAD_MAPS.items() if names.get(mt) in named]
        if heads:
            out.append(pytest.param(mt, heads, id=mt, marks=cell(mt, "derived_spec")))
    return out


def _heads(comp, config):
    if comp.heads is None:
        return None
    return int(getattr(config, comp.heads, None) or config.num_attention_heads)


def _slot(comp, config, width):
    """``(columns, heads)`` of fused slot ``comp.split3`` in an output ``width`` wide, written out
    from the layouts' definitions (models/__init__.py's Component.fused)."""
    slot = comp.split3
    if comp.fused is None:  # three equal thirds
        third = width // 3
        return list(range(slot * third, (slot + 1) * third)), None
    layout, hq, hd = comp.fused[0], eval_dim(comp.fused[1], config), eval_dim(comp.fused[2], config)
    kv = (width // hd - hq) // 2
    if layout == "sizes":
        first = (0, hq, hq + kv)[slot]
        n = hq if slot == 0 else kv
        return list(range(first * hd, (first + n) * hd)), n
    assert layout == "grouped", layout
    per = hq // kv  # query heads per key/value group; a group is [its queries | k | v]
    cols = []
    for g in range(kv):
        start = g * (per + 2) + (0, per, per + 1)[slot]
        n = per if slot == 0 else 1
        cols += range(start * hd, (start + n) * hd)
    return cols, per * kv if slot == 0 else kv


def _evaluated(comp, prefix, model):
    """A component as the engine uses it: full module path, every view field, numbers not names;
    a fused slot as the columns it covers and its head count (so equal layouts compare equal)."""
    config = model.config
    out = {}
    for f in dataclasses.fields(comp):
        v = getattr(comp, f.name)
        if f.name == "module":
            v = prefix + v
        elif f.name == "heads":
            v = _heads(comp, config) if v != "layout" else None
        elif f.name == "dim":
            v = eval_dim(v, config)
        elif f.name == "fused":
            continue
        out[f.name] = v
    if comp.split3 is not None:
        mod = model.get_submodule(prefix + comp.module.format(layer=0))
        width = mod.out_features if hasattr(mod, "out_features") else mod.nf
        out["columns"], layout_heads = _slot(comp, config, width)
        if comp.heads is not None:
            out["heads"] = layout_heads if comp.heads == "layout" else out["heads"]
            if out["heads"] is None:  # equal thirds: the heads of each third
                out["heads"] = _heads(comp, config)
        if out["dim"] is None:  # no config expression: the engine takes the slot's width off the graph
            out["dim"] = len(out["columns"]) // (out["heads"] or 1)
    return out


@pytest.mark.parametrize("model_type,heads", _registered())
def test_derived_equals_hand_spec(model_type, heads):
    for head in heads:
        model = make_tiny(model_type, head=head)
        hand, prefix = hand_family_for(model)
        assert hand is not None and not hand.derived
        got = derive.derive_family(model)  # never consults the hand specs
        cls = type(model).__name__
        cfg = model.config
        assert got.derived and got.prefixes == {cls: prefix}, (cls, got.prefixes, prefix)
        assert getattr(cfg, got.n_layers) == getattr(cfg, hand.n_layers) == cfg.num_hidden_layers
        assert set(got.components) == set(hand.components), (
            f"{cls}: hand only {sorted(set(hand.components) - set(got.components))}, derived only "
            f"{sorted(set(got.components) - set(hand.components))}; not derived: {got.missing}"
        )
        for name, comp in hand.components.items():
            want = _evaluated(comp, prefix, model)
            if (name, want["module"]) in _PYVENE_ALIASES:  # same node, pyvene's module name (test below)
                want["module"] = _PYVENE_ALIASES[name, want["module"]]
            assert _evaluated(got.components[name], prefix, model) == want, (cls, name)


_VARIANTS = [  # fused q/k/v layouts a config switches between, each against the family's hand spec
    ("falcon", dict(multi_query=False), "per head [q|k|v]"),
    ("falcon", dict(new_decoder_architecture=True, num_kv_heads=2), "per group [q q|k|v]"),
    ("phi3", dict(num_key_value_heads=4), "no GQA: [q|k|v] thirds"),
]


@pytest.mark.parametrize(
    "model_type,overrides,what",
    [
        pytest.param(mt, kw, what, id=f"{mt}-{what}", marks=cell(mt, "derived_spec"))
        for mt, kw, what in _VARIANTS
        if mt in AVAILABLE
    ],
)
def test_derived_equals_hand_spec_on_layout_variants(model_type, overrides, what):
    model = make_tiny(model_type, **overrides)
    hand, prefix = hand_family_for(model)
    if hand is None:
        pytest.skip(f"no hand spec for {model_type} registered")
    got = derive.derive_family(model)
    assert got.missing == {} and set(got.components) == set(hand.components)
    for name, comp in hand.components.items():
        assert _evaluated(got.components[name], prefix, model) == _evaluated(comp, prefix, model), name


# GPT-2's map is pyvene's: it reads the attention output at the attention's last child, its residual
# dropout; the derived map reads the attention module's output, the same tensor (checked below).
_PYVENE_ALIASES = {
    ("attention_output", "transformer.h.{layer}.attn.resid_dropout"): "transformer.h.{layer}.attn",
    ("attention_output", "h.{layer}.attn.resid_dropout"): "h.{layer}.attn",
}


@pytest.mark.skipif(int(transformers.__version__.split(".")[0]) >= 5, reason="hf_fx (fast) is on transformers 4 only")
def test_pyvene_alias_is_the_same_node():
    from fxvene.graph.sites import resolve_site
    from fxvene.graph.tracing import trace

    model = make_tiny("gpt2", head="base")
    traced = trace(model, ("input_ids", "attention_mask"), tracer="hf_fx")
    hand = resolve_site(traced, model, "attention_output", 1)
    assert hand.path == "h.1.attn.resid_dropout"
    derived = resolve_site(traced, model, "h[1].attn.output", 1)
    assert hand.node == derived.node


def test_every_registered_family_is_derived_somewhere():
    """The matrix above is not empty by accident: GPT-2 and the Llama layout are always there."""
    ids = {p.id for p in _registered()}
    assert {"gpt2", "llama", "mistral", "qwen2"} <= ids


# --------------------------------------------------------------------------- a family with no file

# Cohere: the Llama module layout (self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj, act_fn) with a
# parallel block; on both transformers lines and no spec in fxvene.models. hf_fx traces it on 4.x.
NO_FILE = "cohere"


@pytest.fixture(scope="module")
def unmapped():
    cfg = AutoConfig.for_model(NO_FILE, **{**COMMON, **LLAMA_LIKE})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    assert hand_family_for(model) == (None, None), "pick another family: this one has a spec now"
    return model


def test_unmapped_family_gets_the_llama_layout(unmapped):
    fam, prefix = family_for(unmapped)
    assert fam is not None and fam.derived and fam.missing == {} and prefix == "model."
    llama_model = make_tiny("llama")
    llama, _ = hand_family_for(llama_model)
    assert set(fam.components) == set(llama.components)
    for name, comp in llama.components.items():
        assert _evaluated(fam.components[name], "", unmapped) == _evaluated(comp, "", llama_model), name
    assert family_for(unmapped)[0] is fam  # derived once per model


def _hook_patch(model, module, base, src, edit):
    """Logits of ``base`` with ``module``'s output rewritten by ``edit(base_out, src_out)``."""
    seen = {}
    h = module.register_forward_hook(lambda m, a, o: seen.__setitem__("src", o.detach().clone()))
    with torch.no_grad():
        model(**src)
    h.remove()
    h = module.register_forward_hook(lambda m, a, o: edit(o.clone(), seen["src"]))
    with torch.no_grad():
        out = model(**base).logits
    h.remove()
    return out


def test_unmapped_family_vanilla_patches_equal_hooks(unmapped):
    g = torch.Generator().manual_seed(1)
    base = {
        "input_ids": torch.randint(3, 64, (2, 7), generator=g),
        "attention_mask": torch.ones(2, 7, dtype=torch.long),
    }
    src = {"input_ids": torch.randint(3, 64, (2, 7), generator=g), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    layers = unmapped.model.layers
    clean = unmapped(**base).logits

    # mlp_output at layer 1, positions per example
    pos = [[1, 4], [6, 2]]

    def put_pos(o, s):
        for b in range(2):
            o[b, pos[b]] = s[b, pos[b]]
        return o

    want = _hook_patch(unmapped, layers[1].mlp, base, src, put_pos)
    cfg = pv.IntervenableConfig(
        representations=[
            pv.RepresentationConfig(layer=1, component="mlp_output", intervention_type=pv.VanillaIntervention)
        ]
    )
    im = pv.IntervenableModel(cfg, unmapped)
    _, out = im(base=base, sources=[src], unit_locations={"sources->base": ([pos], [pos])})
    torch.testing.assert_close(out.logits, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(want, clean)

    # head_value_output at layer 0: key/value heads (GQA, 2 of them) x positions of v_proj's output
    heads, hpos = [[1], [0]], [[3, 5], [0, 6]]
    dh = unmapped.config.hidden_size // unmapped.config.num_attention_heads

    def put_heads(o, s):
        for b in range(2):
            for hh in heads[b]:
                cols = slice(hh * dh, (hh + 1) * dh)
                o[b, hpos[b], cols] = s[b, hpos[b], cols]
        return o

    want = _hook_patch(unmapped, layers[0].self_attn.v_proj, base, src, put_heads)
    cfg = pv.IntervenableConfig(
        representations=[
            pv.RepresentationConfig(
                layer=0, component="head_value_output", unit="h.pos", intervention_type=pv.VanillaIntervention
            )
        ]
    )
    im = pv.IntervenableModel(cfg, unmapped)
    loc = [[heads, hpos]]
    _, out = im(base=base, sources=[src], unit_locations={"sources->base": (loc, loc)})
    torch.testing.assert_close(out.logits, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(want, clean)


def test_cli_components_marks_a_derived_map(unmapped, tmp_path, capsys, monkeypatch):
    unmapped.config.save_pretrained(tmp_path)  # the CLI checks its arguments on config.json
    # the model itself: the fixture's (already traced), not a reload of the same random weights
    monkeypatch.setattr(cli, "load_model", lambda spec: unmapped)
    code = cli.main(["components", str(tmp_path), "--layer", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "component map: derived from the module tree" in out and "CohereForCausalLM" in out
    assert "not derived" not in out
    rows = [ln.split() for ln in out.splitlines() if ln.startswith(("head_value_output ", "mlp_activation "))]
    assert [r[:2] for r in rows] == [["mlp_activation", "1"], ["head_value_output", "1"]]
    assert "model.layers.1.mlp.act_fn" in rows[0] and "model.layers.1.self_attn.v_proj" in rows[1]


def test_hand_map_is_not_marked():
    fam, _ = family_for(make_tiny("llama", head="base"))
    assert not fam.derived and derive.describe_derived(fam) == []


# --------------------------------------------------------------------------- what it cannot find


def _renamed(model, attr_old, attr_new):
    """``model`` with the child ``attr_old`` of every attention module renamed ``attr_new``."""
    for layer in model.model.layers:
        attn = layer.self_attn
        setattr(attn, attr_new, getattr(attn, attr_old))
        delattr(attn, attr_old)
    return model


def test_missing_role_is_a_clear_error_not_a_wrong_node():
    model = _renamed(make_tiny("llama"), "v_proj", "mystery")
    fam = derive.derive_family(model)
    for comp in ("value_output", "head_value_output"):
        assert comp not in fam.components
        msg = fam.missing[comp]
        assert "value projection" in msg and "v_proj" in msg and "value" in msg
        assert "block 0 (model.layers.0) of LlamaForCausalLM" in msg
    assert "key_output" in fam.components and "query_output" in fam.components
    # through the engine: asking for it names what was looked for (the hand spec hidden here)
    from fxvene.graph.sites import resolve_site

    class Traced:  # resolve_site stops at the spec, before the graph
        gm = None

    import fxvene.models as models

    old = models._FAMILIES
    models._FAMILIES = [f for f in families() if "LlamaForCausalLM" not in f.prefixes]
    try:
        with pytest.raises(
            ValueError,
            match=r"'value_output' of LlamaForCausalLM \(derived map\): no module of "
            r"role 'value projection'",
        ):
            resolve_site(Traced, model, "value_output", 0)
    finally:
        models._FAMILIES = old


def _odd_names(model):
    """Every attention's q/k/v/o renamed to names that say nothing, in a shuffled order; the forward
    still runs (the old names become properties of a subclass)."""
    new = {"v_proj": "wa", "q_proj": "wb", "o_proj": "wc", "k_proj": "wd"}
    base = type(model.model.layers[0].self_attn)
    odd = type("OddAttention", (base,), {old: property(lambda self, n=n: self._modules[n]) for old, n in new.items()})
    for layer in model.model.layers:
        attn = layer.self_attn
        renamed = sorted((new.get(k, k), v) for k, v in attn._modules.items())
        object.__setattr__(attn, "_modules", dict(renamed))
        attn.__class__ = odd
    return model, new


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_roles_from_the_traced_attention_when_names_say_nothing(attn):
    model, new = _odd_names(make_tiny("llama", attn=attn))
    hand, prefix = hand_family_for(make_tiny("llama"))
    fam = derive.derive_family(model)
    assert fam.missing == {} and set(fam.components) == set(hand.components)
    for name, comp in hand.components.items():
        want = _evaluated(comp, prefix, make_tiny("llama"))
        for old, odd in new.items():
            want["module"] = want["module"].replace(old, odd)
        assert _evaluated(fam.components[name], prefix, model) == want, name
    assert fam.components["value_output"].module == "layers.{layer}.self_attn.wa"


def test_roles_the_graph_cannot_tell_are_missing():
    """A forward that fails while traced: no role is guessed (names say nothing, the graph neither)."""
    model = _renamed(make_tiny("llama"), "v_proj", "mystery")  # LlamaAttention.forward needs v_proj
    fam = derive.derive_family(model)
    msg = fam.missing["value_output"]
    assert "no module of role 'value projection'" in msg and "the traced attention does not tell either" in msg
    assert "attention_value_output" in fam.components  # o_proj by name


def test_wrong_shape_is_not_taken():
    model = make_tiny("llama")
    for layer in model.model.layers:  # a k_proj whose width does not match the config's kv heads
        layer.self_attn.k_proj = torch.nn.Linear(32, 24, bias=False)
    fam = derive.derive_family(model)
    assert "key_output" not in fam.components
    assert "maps 32 -> 24 features; the config's head geometry wants 32 -> 16" in fam.missing["key_output"]


def test_mlp_found_by_shape_when_its_name_says_nothing():
    model = make_tiny("llama", head="base")
    for layer in model.layers:
        layer.channel_mixer = layer.mlp  # renamed: the hidden size out (gate/up) and back (down)
        del layer.mlp
    fam = derive.derive_family(model)
    assert fam.components["mlp_output"].module == "layers.{layer}.channel_mixer"
    assert fam.components["mlp_activation"].module == "layers.{layer}.channel_mixer.act_fn"


def test_encoder_without_a_decoder_mlp_is_no_family():
    """BERT's feed-forward is split over two children (intermediate, output): nothing is guessed (BERT's
    components come from its hand-written map, models/bert.py, instead)."""
    bert = transformers.BertModel(
        transformers.BertConfig(
            num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32, vocab_size=30
        )
    )
    with pytest.raises(derive.DeriveError, match=r"no MLP module in block 0 \(encoder.layer.0\) of BertModel"):
        derive.derive_family(bert)
    fam, prefix = family_for(bert)
    assert fam.name == "bert" and not fam.derived and prefix == ""


def test_no_blocks_is_no_family():
    model = make_tiny("llama", head="base")
    model.layers = torch.nn.ModuleList(list(model.layers)[:1])  # 1 block, config says 2
    with pytest.raises(derive.DeriveError, match=r"no ModuleList of 2 blocks of one class in LlamaModel"):
        derive.derive_family(model)
