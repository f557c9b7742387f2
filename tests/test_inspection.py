"""Site listings, component tables and graph diffs on known GPT-2 and Llama graphs.

Expected values are computed here, independently of fxvene's locate/rewrite code: module
regions straight from ``nn_module_stack``, users and ancestors by walking the fx graph,
shapes from the model config.
"""

import io
import re
import shutil

import pytest
from _matrix import cell
from conftest import frontends

import fxvene as pv
from fxvene.graph.tracing import trace
from fxvene.inspection import diff as graphdiff
from fxvene.inspection import tables as inspection
from fxvene.models import Component, family_for

SIG = ("input_ids", "attention_mask")
B, S = 2, 8  # the example input every graph is shape-propagated on

GPT2_COMPONENTS = {  # pyvene 0.1.8's GPT-2 map, typed out: component -> (module suffix, port)
    "block_input": ("", "input"),
    "block_output": ("", "output"),
    "mlp_activation": (".mlp.act", "output"),
    "mlp_output": (".mlp", "output"),
    "mlp_input": (".mlp", "input"),
    "attention_value_output": (".attn.c_proj", "input"),
    "head_attention_value_output": (".attn.c_proj", "input"),
    "attention_weight": (".attn", "output"),
    "attention_output": (".attn.resid_dropout", "output"),
    "attention_input": (".attn", "input"),
    "query_output": (".attn.c_attn", "output"),
    "key_output": (".attn.c_attn", "output"),
    "value_output": (".attn.c_attn", "output"),
    "head_query_output": (".attn.c_attn", "output"),
    "head_key_output": (".attn.c_attn", "output"),
    "head_value_output": (".attn.c_attn", "output"),
}


# ------------------------------------------------------------------------------ independent helpers


def _stack(node):
    out = []
    for key, val in (node.meta.get("nn_module_stack") or {}).items():
        p = val[0] if isinstance(val, tuple) else key
        p = re.sub(r"^L\['self'\]\.?", "", p)
        p = re.sub(r"\[(\d+)\]", r".\1", p)
        out.append(p)
    return out


def _block_output(gm, path):
    """The one tensor node of module ``path`` read outside it (computed from nn_module_stack)."""
    inside = {n for n in gm.graph.nodes if path in _stack(n)}
    esc = [
        n
        for n in inside
        if n.op != "get_attr" and hasattr(n.meta.get("val"), "shape") and any(u not in inside for u in n.users)
    ]
    assert len(esc) == 1, [n.name for n in esc]
    return esc[0]


def _ancestors(node):
    seen, todo = set(), [node]
    while todo:
        for a in todo.pop().all_input_nodes:
            if a not in seen:
                seen.add(a)
                todo.append(a)
    return seen


def _model(request, family):
    return request.getfixturevalue(family)


# ------------------------------------------------------------------------------ graph diffs


CASES = [
    pytest.param(*c, marks=[cell("gpt2", "graph_diff")] if c[0] == "gpt2" else [], id=f"{c[0]}-{c[1]}")
    for c in [("gpt2", 3, "transformer.h.3"), ("gpt2", 1, "transformer.h.1"), ("llama", 1, "model.layers.1")]
]


@pytest.mark.parametrize("frontend", frontends())
@pytest.mark.parametrize("family,layer,path", CASES)
def test_vanilla_block_output_diff(request, family, layer, path, frontend):
    model = _model(request, family)
    iv = pv.IntervenableModel({"layer": layer, "component": "block_output"}, model, tracer=frontend)
    d = iv.graph_diff()
    old = trace(model, SIG, tracer=frontend).gm
    assert d.old is old
    site = _block_output(old, path)
    users = {u.name for u in site.users}
    # the next block (or the final norm, after the last block) reads the block's output
    nxt = {
        "gpt2": f"transformer.h.{layer + 1}" if layer < 3 else "transformer.ln_f",
        "llama": f"model.layers.{layer + 1}",
    }[family]
    assert users and all(any(p.startswith(nxt) for p in _stack(u)) for u in site.users.keys())

    # exactly one intervention node and its two data placeholders are added; nothing removed
    assert sorted(d.added) == ["fxv_loc_0", "fxv_site_0", "fxv_src_0"]
    assert d.added_by_kind() == {"input": ["fxv_src_0", "fxv_loc_0"], "intervention": ["fxv_site_0"]}
    assert d.removed == [] and d.outputs_added == [] and d.outputs_removed == []
    # exactly the users of the block's output are rewired, each from the site to the new node
    assert set(d.rewired) == users
    for before, after in d.rewired.values():
        assert after == tuple("fxv_site_0" if a == site.name else a for a in before)
        assert site.name in before
    new_nodes = {n.name: n for n in d.new.graph.nodes}
    assert [a.name for a in new_nodes["fxv_site_0"].all_input_nodes] == [site.name, "fxv_src_0", "fxv_loc_0"]
    assert {u.name for u in new_nodes[site.name].users} == {"fxv_site_0"}
    assert d.sites == [site.name]
    assert d.edges_removed == {(site.name, u) for u in users}
    assert d.edges_added == {(site.name, "fxv_site_0"), ("fxv_src_0", "fxv_site_0"), ("fxv_loc_0", "fxv_site_0")} | {
        ("fxv_site_0", u) for u in users
    }

    # (a) text: 3 added lines + one -/+ pair per rewired user, with module paths
    text = d.text(context=0)
    plus = [ln for ln in text.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    minus = [ln for ln in text.splitlines() if ln.startswith("-") and not ln.startswith("---")]
    assert len(plus) == 3 + len(users) and len(minus) == len(users)
    assert any(ln.startswith(f"+fxv_site_0 = self.fxv_site_0({site.name}, fxv_src_0, fxv_loc_0)") for ln in plus)
    assert any("VanillaIntervention" in ln and path in ln for ln in plus)
    for u in users:
        mod = [p for p in _stack(new_nodes[u]) if p][-1]
        assert any(ln.startswith(f"+{u} = ") and "fxv_site_0" in ln and ln.endswith(f"# {mod}") for ln in plus)
    code = d.code_diff()
    assert "fxv_site_0 = self.fxv_site_0(" in code and "+def forward(" in code

    # (c) networkx: statuses on nodes and edges
    g = d.to_networkx()
    assert g.nodes["fxv_site_0"]["status"] == "added" and g.nodes["fxv_site_0"]["fxvene"] == "intervention"
    assert {n for n, s in g.nodes(data="status") if s == "rewired"} == users
    assert g.nodes[site.name]["site"] and g.nodes[site.name]["status"] == "unchanged"
    for u in users:
        assert g.edges[site.name, u]["status"] == "removed"
        assert g.edges["fxv_site_0", u]["status"] == "added"
    assert len(g) == len(old.graph.nodes) + 3


@pytest.mark.parametrize("frontend", frontends())
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_collect_adds_an_output(request, family, frontend):
    model = _model(request, family)
    iv = pv.IntervenableModel(
        {"layer": 1, "component": "mlp_output", "intervention_type": pv.CollectIntervention}, model, tracer=frontend
    )
    d = iv.graph_diff()
    path = {"gpt2": "transformer.h.1.mlp", "llama": "model.layers.1.mlp"}[family]
    site = _block_output(d.old, path)
    assert sorted(d.added) == ["fxv_collect_0", "fxv_loc_0"]
    assert d.added_by_kind() == {"input": ["fxv_loc_0"], "collect": ["fxv_collect_0"]}
    assert d.outputs_added == ["fxv_collect_0"]
    assert list(d.rewired) == ["output"]  # a tap: no user of the site is rewired
    n_out = len(trace(model, SIG, tracer=frontend).output_keys)
    assert len(d._new_nodes["output"].args[0]) == n_out + 1
    assert d.sites == [site.name]
    new_site = d._new_nodes[site.name]
    assert {u.name for u in new_site.users} == {u.name for u in site.users} | {"fxv_collect_0"}


@pytest.mark.parametrize("frontend", frontends())
@pytest.mark.parametrize("family,path", [("gpt2", "transformer.h.1"), ("llama", "model.layers.1")])
def test_source_graph_truncation(request, family, path, frontend):
    model = _model(request, family)
    iv = pv.IntervenableModel({"layer": 1, "component": "block_output"}, model, tracer=frontend)
    d = iv.graph_diff(plan="source")
    old = list(d.old.graph.nodes)
    site = _block_output(d.old, path)
    needed = _ancestors(site) | {site}
    removed = set(d.removed)
    # every node after the site is removed (the output is replaced, not removed) ...
    after = [n.name for n in old[old.index(site) + 1 :] if n.op != "output"]
    assert after and set(after) <= removed
    # ... and nothing the site needs is
    assert not removed & {n.name for n in needed}
    if family == "gpt2":  # no in-place ops in GPT-2's graphs: exactly the unneeded nodes go
        assert removed == {n.name for n in old if n not in needed and n.op not in ("placeholder", "output")}
    assert sorted(d.added) == ["fxv_get_0", "fxv_sloc_0"]
    assert d.outputs_added == ["fxv_get_0"] and [a.name for a in d._new_nodes["output"].all_input_nodes] == [
        "fxv_get_0"
    ]
    assert list(d.rewired) == ["output"]
    text = d.text(context=1, max_run=8)
    assert re.search(r"^- \.\.\. \d+ more removed lines in .*\.\.\.$", text, re.M)
    full = d.text(context=1)
    assert len([ln for ln in full.splitlines() if ln.startswith("-") and not ln.startswith("---")]) == len(removed) + 1
    assert "source run of group 0" in d.summary() and f"-{len(removed)} removed" in d.summary()


def _check_dot(dot, d):
    assert dot.startswith("digraph fxvene_diff {") and dot.rstrip().endswith("}")
    # braces balance outside quoted strings
    depth = 0
    for ch in re.sub(r'"(?:[^"\\]|\\.)*"', '""', dot):
        depth += ch == "{"
        depth -= ch == "}"
        assert depth >= 0
    assert depth == 0
    declared = set(re.findall(r'^\s*"((?:[^"\\]|\\.)*)" \[', dot, re.M))
    edges = re.findall(r'^\s*"((?:[^"\\]|\\.)*)" -> "((?:[^"\\]|\\.)*)"', dot, re.M)
    assert edges and all(a in declared and b in declared for a, b in edges)
    assert "subgraph cluster_" in dot
    return declared, edges


def _fill(dot, name):
    m = re.search(rf'^\s*"{re.escape(name)}" \[.*fillcolor="([^"]+)"', dot, re.M)
    return m.group(1) if m else None


@pytest.mark.parametrize("frontend", frontends())
def test_dot_highlights_and_clusters(gpt2, frontend, tmp_path):
    iv = pv.IntervenableModel({"layer": 1, "component": "block_output"}, gpt2, tracer=frontend)
    d = iv.graph_diff()
    site = _block_output(d.old, "transformer.h.1")
    dot = d.to_dot()
    declared, edges = _check_dot(dot, d)
    assert declared >= {n.name for n in d.new.graph.nodes}
    assert _fill(dot, "fxv_site_0") == graphdiff.COLORS["added"]
    for u in d.rewired:
        assert _fill(dot, u) == graphdiff.COLORS["rewired"]
    # the intervention node sits in its site's module cluster
    cluster = dot[dot.index('label="transformer.h.1";') :]
    assert cluster.index('"fxv_site_0"') < cluster.index('label="transformer.h.2";')
    assert re.search(rf'"{site.name}" \[.*penwidth=2.5', dot)
    # a neighbourhood keeps the changes and drops far nodes
    small = d.to_dot(neighbourhood=1)
    sd, _ = _check_dot(small, d)
    assert {"fxv_site_0", site.name, *d.rewired} <= sd and len(sd) < len(declared) / 3
    # removed nodes are red; collapsed into one node per module on request
    src = iv.graph_diff(plan="source")
    sdot = src.to_dot()
    _check_dot(sdot, src)
    assert all(_fill(sdot, n) == graphdiff.COLORS["removed"] for n in src.removed)
    cdot = src.to_dot(collapse_removed=True)
    cd, _ = _check_dot(cdot, src)
    assert not cd & set(src.removed) and any(n.startswith("removed::") for n in cd)
    n_collapsed = sum(int(k) for k in re.findall(r'label="(\d+) removed nodes?\\n', cdot))
    assert n_collapsed == len(src.removed)
    if shutil.which("dot"):
        out = graphdiff.render_dot(small, str(tmp_path / "d.svg"))
        assert "<svg" in open(out).read()


# ------------------------------------------------------------------------------ component tables


@pytest.mark.parametrize("frontend", frontends())
def test_component_table_gpt2(gpt2, frontend):
    cfg = gpt2.config
    rows = inspection.component_table(gpt2, tracer=frontend)
    gm = trace(gpt2, SIG, tracer=frontend).gm
    nodes = {n.name: n for n in gm.graph.nodes}
    assert [(r.component, r.layer) for r in rows] == [(c, l) for c in GPT2_COMPONENTS for l in range(cfg.n_layer)]
    E, H = cfg.n_embd, cfg.n_head
    by = {(r.component, r.layer): r for r in rows}
    for r in rows:
        assert r.ok, (r.component, r.layer, r.error)
        suffix, port = GPT2_COMPONENTS[r.component]
        path = f"transformer.h.{r.layer}{suffix}"
        assert (r.module, r.port, r.frontend, r.dtype) == (path, port, frontend, "float32")
        node = nodes[r.node]
        if port == "output":
            assert path in _stack(node)
        else:  # a module's input comes from outside it and is read inside it
            assert path not in _stack(node) and any(path in _stack(u) for u in node.users)
        assert r.shape == tuple(node.meta["val"].shape)
    for l in range(cfg.n_layer):
        assert by["block_output", l].shape == (B, S, E)
        assert by["mlp_activation", l].shape == (B, S, 4 * E)
        assert by["attention_weight", l].shape == (B, H, S, S)
        for c in ("query_output", "key_output", "value_output"):
            assert by[c, l].shape == (B, S, 3 * E) and by[c, l].view == (B, S, E)  # a third of fused c_attn
        for c in ("head_query_output", "head_key_output", "head_value_output", "head_attention_value_output"):
            assert by[c, l].n_heads == H and by[c, l].view == (B, H, S, E // H)
        assert by["head_query_output", l].node == by["query_output", l].node
        assert by["block_output", l].node == _block_output(gm, f"transformer.h.{l}").name
        if l + 1 < cfg.n_layer:  # block l's output is block l+1's input
            assert by["block_input", l + 1].node == by["block_output", l].node


@pytest.mark.parametrize("frontend", frontends())
def test_component_table_llama_gqa(llama, frontend):
    cfg = llama.config
    kv, H = cfg.num_key_value_heads, cfg.num_attention_heads
    dh = cfg.hidden_size // H
    assert kv < H  # the fixture is a GQA model
    rows = inspection.component_table(llama, tracer=frontend, layer=2)
    by = {r.component: r for r in rows}
    assert all(r.ok and r.layer == 2 for r in rows if r.component != "attention_weight") and len(rows) == 16
    assert "eager" in by["attention_weight"].error  # the fixture uses SDPA: a clear error row, not a wrong node
    assert by["block_output"].shape == (B, S, cfg.hidden_size)
    assert by["mlp_activation"].shape == (B, S, cfg.intermediate_size)
    assert by["query_output"].shape == (B, S, H * dh)
    for c in ("key_output", "value_output"):
        assert by[c].shape == (B, S, kv * dh) and by[c].module.endswith(c[0] + "_proj")
    for c in ("head_key_output", "head_value_output"):
        assert by[c].n_heads == kv and by[c].view == (B, kv, S, dh)
    assert by["head_query_output"].n_heads == H and by["head_query_output"].view == (B, H, S, dh)
    assert by["block_output"].node == _block_output(trace(llama, SIG, tracer=frontend).gm, "model.layers.2").name


def test_component_table_reports_candidates(llama, monkeypatch):
    """A component that resolves to several nodes is listed with them (the rotary embedding returns cos and sin)."""
    fam, _ = family_for(llama)
    monkeypatch.setitem(fam.components, "rotary_output", Component("rotary_emb", "output"))
    frontend = frontends()[-1]
    rows = inspection.component_table(llama, tracer=frontend, layer=0, components=["rotary_output", "block_output"])
    bad, good = rows
    assert good.ok and bad.node is None and not bad.ok
    gm = trace(llama, SIG, tracer=frontend).gm
    expect = {n.name for n in gm.graph.nodes if "model.rotary_emb" in _stack(n)}
    assert len(bad.candidates) == 2 and set(bad.candidates) <= expect
    assert "resolves to 2 nodes" in bad.error
    text = inspection.format_table(rows)
    assert "UNRESOLVED" in text and "[1]" in text
    assert f"(candidates: {', '.join(bad.candidates)})" in text


def test_component_table_arguments(gpt2):
    fe = frontends()[-1]
    with pytest.raises(ValueError, match="layer 9 is out of range"):
        inspection.component_table(gpt2, tracer=fe, layer=9)
    with pytest.raises(TypeError, match="layer"):
        inspection.component_table(gpt2, tracer=fe, layer="1")
    with pytest.raises(ValueError, match="components"):
        inspection.component_table(gpt2, tracer=fe, components=["nope"])
    with pytest.raises(ValueError, match="no component map"):
        inspection.component_table(pv.VanillaIntervention(embed_dim=4), tracer=fe)
    with pytest.raises(ValueError, match="columns"):
        inspection.format_table([], columns=["nope"])


# ------------------------------------------------------------------------------ site listings


@pytest.mark.parametrize("frontend", frontends())
def test_sites_listing(gpt2, frontend):
    config = pv.IntervenableConfig(
        [
            {"layer": 1, "component": "block_output", "intervention_type": pv.VanillaIntervention},
            {"layer": 2, "component": "head_key_output", "unit": "h.pos", "intervention_type": pv.VanillaIntervention},
            {"layer": 0, "component": "mlp_output", "intervention_type": pv.SkipIntervention},
        ]
    )
    iv = pv.IntervenableModel(config, gpt2, tracer=frontend)
    rows = iv.sites()
    gm = trace(gpt2, SIG, tracer=frontend).gm
    assert [r.key for r in rows] == iv.sorted_keys
    r0, r1, r2 = rows
    assert (r0.component, r0.layer, r0.unit, r0.intervention) == ("block_output", 1, "pos", "VanillaIntervention")
    assert r0.node == _block_output(gm, "transformer.h.1").name and r0.module == "transformer.h.1"
    assert r0.shape == (B, S, 24) and r0.frontend == frontend and r0.dtype == "float32"
    assert (
        r1.module == "transformer.h.2.attn.c_attn" and r1.node == _block_output(gm, "transformer.h.2.attn.c_attn").name
    )
    assert r1.n_heads == 4 and r1.view == (B, 4, S, 6) and r1.unit == "h.pos"
    # Skip reads the module's input on the source side
    mlp_in = {u.name for u in gm.graph.nodes if "transformer.h.0.mlp" in _stack(u)}
    src = next(n for n in gm.graph.nodes if n.name == r2.source_node)
    assert src.name not in mlp_in and any(u.name in mlp_in for u in src.users)
    buf = io.StringIO()
    iv.print_sites(file=buf)
    text = buf.getvalue()
    assert f"frontend {frontend}" in text and "source side: " + r2.source_node in text
    for r in rows:
        assert r.key in text and r.node in text


def test_rewritten_graph_arguments(gpt2):
    fe = frontends()[-1]
    iv = pv.IntervenableModel(
        [
            {"layer": 1, "component": "block_output", "intervention_type": pv.VanillaIntervention},
            {"layer": 2, "component": "block_output", "intervention_type": pv.CollectIntervention},
        ],
        gpt2,
        tracer=fe,
    )
    with pytest.raises(ValueError, match="plan"):
        iv.rewritten_graph(plan="other")
    with pytest.raises(ValueError, match="group"):
        iv.rewritten_graph(plan="source", group=5)
    with pytest.raises(ValueError, match="no intervention in it reads a source"):
        iv.rewritten_graph(plan="source", group=1)  # the Collect group has no source run
    with pytest.raises(ValueError, match="unknown intervention keys"):
        iv.rewritten_graph(active=["nope"])
    with pytest.raises(ValueError, match="collect"):
        iv.rewritten_graph(active=[iv.sorted_keys[1]])
    # a subset plan: only the collection
    d = iv.graph_diff(active=[])
    assert sorted(d.added) == ["fxv_collect_1", "fxv_loc_1"]
    with pytest.raises(TypeError, match="old"):
        graphdiff.diff("x", d.new)
    same = graphdiff.diff(d.old, d.old)
    assert same.changed() == [] and same.text() == ""
