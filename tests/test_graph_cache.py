"""The on-disk graph cache: reused across processes, validated on load, pickle-free, weight-free,
safe between concurrent writers, and clearable. Outputs are compared with the HF model's own."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fxvene.graph import cache as graph_cache
from fxvene.graph import step_graphs as SG
from fxvene.graph import tracing

ROOT = Path(__file__).resolve().parents[1]

# a model each process can rebuild identically (seeded weights), a few MB of weights
BUILD = """
import torch
from transformers import GPT2Config, GPT2LMHeadModel
torch.manual_seed(0)
cfg = GPT2Config(n_layer=2, n_embd=128, n_head=4, vocab_size=3000, n_positions=64,
                 attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0)
cfg._attn_implementation = "eager"
model = GPT2LMHeadModel(cfg).eval()
"""

# in a fresh process: the chunk step graph and the export forward graph, compared with HF
CHILD = (
    BUILD
    + """
import json, sys
from fxvene.graph import tracing
from fxvene.graph.step_graphs import flat_cache, step_graph
sg = step_graph(model, "chunk")
tg = tracing.trace(model, tracer="export")
g = torch.Generator().manual_seed(3)
ids = torch.randint(0, 3000, (3, 9), generator=g)
mask = torch.ones_like(ids)
with torch.no_grad():
    ref = model(input_ids=ids, attention_mask=mask).logits
    past = flat_cache(model(input_ids=ids[:, :4], use_cache=True).past_key_values)
    got_chunk = sg.gm(ids[:, 4:], mask, torch.arange(4, 9).expand(3, -1), *past)[0]
    got_fwd = tg.wrap_outputs(tg.gm(input_ids=ids, attention_mask=mask)).logits
print(json.dumps({
    "chunk_from_cache": sg.from_cache, "forward_from_cache": tg.meta["from_cache"],
    "chunk_diff": float((got_chunk - ref[:, -1]).abs().max()), "forward_diff": float((got_fwd - ref).abs().max()),
}))
"""
)


def _env(cache):
    env = dict(os.environ)
    env["FXVENE_CACHE_DIR"] = str(cache)
    env.pop("FXVENE_CACHE", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _child(cache, script=CHILD):
    return subprocess.Popen(
        [sys.executable, "-c", script],
        env=_env(cache),
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(proc):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1]), err


def _files(cache):
    return sorted(p for p in Path(cache).iterdir())


def _model():
    ns = {}
    exec(BUILD, ns)  # the same seeded model as the child processes build
    return ns["model"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "graphs"
    monkeypatch.setenv("FXVENE_CACHE_DIR", str(d))
    monkeypatch.delenv("FXVENE_CACHE", raising=False)
    return d


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One empty cache directory, two child processes exporting into it at the same time, then a third
    process that finds both graphs there: ``(directory, [writer results], reader result)``. The process
    tests below and the entry tests further down share this one set of exports."""
    d = tmp_path_factory.mktemp("shared") / "graphs"
    writers = [_result(p)[0] for p in [_child(d), _child(d)]]
    reader, _ = _result(_child(d))
    return d, writers, reader


def test_second_process_loads_from_cache_and_matches_hf(shared):
    cache, writers, reader = shared
    # the directory was empty: each graph was exported by a writer (the one that finished later may
    # already have found the other's entry), and the process after them loads both
    for graph in ("chunk_from_cache", "forward_from_cache"):
        assert not all(w[graph] for w in writers), writers
    assert len(list(cache.glob("*.fxgraph.json"))) == 2
    assert reader["chunk_from_cache"] and reader["forward_from_cache"]
    for r in (*writers, reader):
        assert r["chunk_diff"] < 1e-4 and r["forward_diff"] < 1e-4, r


def test_concurrent_writers_leave_a_valid_entry(shared):
    cache, writers, _ = shared
    for r in writers:
        assert r["chunk_diff"] < 1e-4 and r["forward_diff"] < 1e-4
    files = _files(cache)
    assert len(files) == 2 and all(p.name.endswith(".fxgraph.json") for p in files)  # no temp files left
    model = _model()
    mp = pytest.MonkeyPatch()
    mp.setenv("FXVENE_CACHE_DIR", str(cache))
    mp.delenv("FXVENE_CACHE", raising=False)
    try:
        assert SG.step_graph(model, "chunk").from_cache
        assert tracing.trace(model, tracer="export").meta["from_cache"]
    finally:
        mp.undo()


def test_cache_holds_json_only_no_pickle_no_weights(shared):
    cache = shared[0]
    model = _model()
    files = _files(cache)
    assert files and all(p.name.endswith(".fxgraph.json") for p in files)  # nothing else: no .pt, no temp files
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    total = 0
    for p in files:
        raw = p.read_bytes()
        total += len(raw)
        assert raw[:1] == b"{" and b"\x80\x02" not in raw and b"\x80\x04" not in raw  # pickle protocol headers
        doc = json.loads(raw)
        # step graphs in fxvene's own format (plain data), forward graphs as torch's exported-program JSON
        form = "graph" if doc["about"]["kind"].startswith("step:") else "program"
        assert set(doc) == {"about", form, "constants"}, (doc["about"]["kind"], set(doc))
        if form == "program":
            json.loads(doc["program"])  # the program is JSON too
        if doc["constants"]:  # safetensors bytes: an 8-byte header length, then a JSON header
            import base64

            blob = base64.b64decode(doc["constants"])
            n = int.from_bytes(blob[:8], "little")
            header = json.loads(blob[8 : 8 + n])
            assert all(
                v["shape"] == [] or int(torch.tensor(v["shape"]).prod()) <= 16
                for k, v in header.items()
                if k != "__metadata__"
            )
    assert total < weight_bytes / 4, (total, weight_bytes)


def _corrupt_truncate(path):
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _graph_nodes(doc, target):
    return [n for n in doc["graph"]["nodes"] if n.get("target") == target]


def _corrupt_semantics(path):
    """Every addition becomes a subtraction: a well-formed entry that computes something else."""
    doc = json.loads(path.read_text())
    adds = _graph_nodes(doc, {"op": ["aten", "add", "Tensor"]})
    assert adds
    for n in adds:
        n["target"] = {"op": ["aten", "sub", "Tensor"]}
    path.write_text(json.dumps(doc))


def _corrupt_code(path):
    """A call target outside torch's operators (``os.system``) is never resolved."""
    doc = json.loads(path.read_text())
    (getitem, *_) = _graph_nodes(doc, {"py": ["operator", "getitem"]})
    getitem["target"] = {"py": ["os", "system"]}
    path.write_text(json.dumps(doc))


def _corrupt_weights(path):
    """An attribute names a tensor the model does not have (an entry of another model)."""
    doc = json.loads(path.read_text())
    attr = next(a for a in doc["graph"]["attrs"].values() if "model" in a)
    attr["model"] = attr["model"] + "_gone"
    path.write_text(json.dumps(doc))


def _corrupt_shapes(path):
    """Shape metadata that no longer says which sizes are symbolic: the graph fails its checks."""
    doc = json.loads(path.read_text())
    for n in doc["graph"]["nodes"]:
        if n["op"] == "placeholder" and n.get("val"):
            n["val"]["t"][0] = [d if isinstance(d, int) else d["h"] for d in n["val"]["t"][0]]
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("corrupt", [_corrupt_truncate, _corrupt_semantics, _corrupt_code])
def test_corrupt_entry_is_detected_and_re_exported(cache, good_entry, corrupt, caplog, capfd, monkeypatch):
    import logging

    from fxvene.graph import progress

    entry = _put(cache, good_entry)
    corrupt(entry)
    model = _model()  # a new model object: nothing in memory, the file is all there is
    monkeypatch.setattr(progress, "_LEVEL", 1)
    orig = progress.progress
    monkeypatch.setattr(SG, "progress", lambda what, **k: orig(what, delay=0))
    capfd.readouterr()
    with caplog.at_level(logging.DEBUG, logger="fxvene.graph.cache"):
        sg = SG.step_graph(model, "chunk")
    assert not sg.from_cache
    assert any("discarding" in r.getMessage() for r in caplog.records)
    assert "graph-cache entry was stale or damaged and is replaced" in capfd.readouterr().err  # the user is told
    assert all(r.levelno <= logging.DEBUG for r in caplog.records if r.name.startswith("fxvene"))
    ids = torch.randint(0, 3000, (2, 6), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(input_ids=ids).logits[:, -1]
        got = sg.gm(*sg.inputs(ids, torch.ones_like(ids), torch.arange(6).expand(2, -1)))[0]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # the entry was written again, whole: a third model loads it
    again = SG.step_graph(_model(), "chunk")
    assert again.from_cache


def test_clear_and_info(cache, good_entry, monkeypatch):
    assert graph_cache.cache_info()["entries"] == 0
    _put(cache, good_entry)
    info = graph_cache.cache_info()
    assert info["dir"] == str(cache) and info["entries"] == 1 and info["graphs"][0]["kind"] == "step:chunk"
    assert "GPT2LMHeadModel" in info["graphs"][0]["model"]
    assert graph_cache.clear_graph_cache() == 1
    assert list(cache.iterdir()) == []
    monkeypatch.setattr(SG, "_export", _no_export)  # nothing to load any more: the next call exports
    with pytest.raises(tracing.TracingError, match="export disabled"):
        SG.step_graph(_model(), "chunk")


def test_key_changes_with_what_the_graph_depends_on():
    m = _model()
    k0, _ = graph_cache.key_for(m, "step:chunk", {"phase": "chunk"})
    assert graph_cache.key_for(m, "step:chunk", {"phase": "chunk"})[0] == k0
    assert graph_cache.key_for(m, "forward", {"phase": "chunk"})[0] != k0
    m.config._attn_implementation = "sdpa"
    assert graph_cache.key_for(m, "step:chunk", {"phase": "chunk"})[0] != k0
    m.config._attn_implementation = "eager"
    m.config.n_inner = 64
    assert graph_cache.key_for(m, "step:chunk", {"phase": "chunk"})[0] != k0
    m.config.n_inner = None
    assert graph_cache.key_for(m.to(torch.float64), "step:chunk", {"phase": "chunk"})[0] != k0


def test_one_export_serves_prefill_decode_and_chunk(cache, monkeypatch):
    """Generation and sweeps share the chunk graph: a process exports one KV-cache graph. With the
    cache disabled (``FXVENE_CACHE=0``) that export writes nothing to the cache directory."""
    calls = []
    orig = SG._export

    def counting(*a, **k):
        calls.append(a[-1])
        return orig(*a, **k)

    SG._export = counting
    try:
        monkeypatch.setenv("FXVENE_CACHE", "0")
        m = _model()
        pre, dec, chunk = (SG.step_graph(m, p) for p in ("prefill", "decode", "chunk"))
    finally:
        SG._export = orig
    assert calls == ["chunk"]
    assert not cache.exists() or list(cache.iterdir()) == []  # the disabled cache wrote nothing
    assert pre.empty_past and pre.gm is chunk.gm and dec.gm is chunk.gm
    ids = torch.randint(0, 3000, (2, 5), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = m(input_ids=ids).logits[:, -1]
        got = pre.gm(*pre.inputs(ids, torch.ones_like(ids), torch.arange(5).expand(2, -1)))[0]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_cache_cli(cache, good_entry, capsys):
    from fxvene.cli.app import main

    _put(cache, good_entry)
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert str(cache) in out and "1 graph" in out and "step:chunk" in out
    assert main(["cache", "clear"]) == 0
    assert "removed 1" in capsys.readouterr().out
    assert list(cache.iterdir()) == []


def test_progress_messages_and_quiet(cache, capfd, monkeypatch):
    from fxvene.graph import progress

    monkeypatch.setattr(progress, "_LEVEL", None)
    with progress.progress("doing a slow thing", delay=0):
        pass
    err = capfd.readouterr().err
    assert err.startswith("fxvene: doing a slow thing...") and "done in" in err
    monkeypatch.setenv("FXVENE_QUIET", "1")
    with progress.progress("doing a slow thing", delay=0):
        pass
    assert capfd.readouterr().err == ""
    monkeypatch.delenv("FXVENE_QUIET")
    progress.set_verbosity(0)
    try:
        with progress.progress("x", delay=0):
            pass
        assert capfd.readouterr().err == ""
    finally:
        progress.set_verbosity(None)
    with pytest.raises(ValueError, match="set_verbosity"):
        progress.set_verbosity(5)


def test_first_export_says_what_it_does(cache, capfd, monkeypatch):
    from fxvene.graph import progress

    monkeypatch.setattr(progress, "_LEVEL", 1)
    orig = progress.progress
    monkeypatch.setattr(SG, "progress", lambda what, **k: orig(what, delay=0))
    assert not SG.step_graph(_model(), "chunk").from_cache  # an empty cache: exported
    err = capfd.readouterr().err
    assert "fxvene: exporting GPT2LMHeadModel with a KV cache" in err and "done in" in err
    assert SG.step_graph(_model(), "chunk").from_cache
    err = capfd.readouterr().err
    assert "fxvene: loading the KV-cache graph of GPT2LMHeadModel from the graph cache" in err


def test_top_level_names(cache, good_entry):
    import fxvene as pv

    assert pv.clear_graph_cache is graph_cache.clear_graph_cache
    from fxvene.graph import progress

    assert pv.set_verbosity is progress.set_verbosity
    _put(cache, good_entry)
    assert pv.clear_graph_cache() == 1


def _entry_doc(cache, kind="step:chunk"):
    docs = [json.loads(p.read_text()) for p in cache.glob("*.fxgraph.json")]
    (doc,) = [d for d in docs if d["about"]["kind"] == kind]
    return doc


def _corrupt_key(path):
    """The entry's recorded key data is another model's (a file renamed or copied into place)."""
    doc = json.loads(path.read_text())
    doc["about"]["config"]["n_embd"] = 64
    path.write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def good_entry(shared):
    """One valid step-graph entry (file name, bytes): the one the child processes wrote."""
    (entry,) = [
        p for p in shared[0].glob("*.fxgraph.json") if json.loads(p.read_text())["about"]["kind"] == "step:chunk"
    ]
    return entry.name, entry.read_bytes()


def _put(cache, entry):
    """Write ``entry`` (file name, bytes) into the cache directory; its path."""
    name, raw = entry
    cache.mkdir(parents=True, exist_ok=True)
    (cache / name).write_bytes(raw)
    return cache / name


def _no_export(*a, **k):
    raise tracing.TracingError("export disabled by the test")


@pytest.mark.parametrize(
    "corrupt,why", [(_corrupt_weights, "_gone"), (_corrupt_shapes, "fixed the"), (_corrupt_key, "does not match")]
)
def test_mismatched_entry_is_rejected_never_used(cache, good_entry, corrupt, why, monkeypatch, caplog):
    """Entries that parse but do not fit this model are discarded with a note, never run: with export
    unavailable, the call fails loudly instead of returning a graph from the bad entry."""
    import logging

    name = _put(cache, good_entry).name
    corrupt(cache / name)
    monkeypatch.setattr(SG, "_export", _no_export)
    with caplog.at_level(logging.DEBUG, logger="fxvene.graph.cache"):
        with pytest.raises(tracing.TracingError, match="export disabled"):
            SG.step_graph(_model(), "chunk")
    notes = [r.getMessage() for r in caplog.records if "discarding" in r.getMessage()]
    assert len(notes) == 1 and why in notes[0], notes
    assert not (cache / name).exists()


def test_program_form_still_loads_when_the_own_format_cannot_store_a_graph(cache, monkeypatch):
    """A graph fxvene's format does not cover is stored as torch's exported program, and loads."""
    from fxvene.graph import format as graph_format

    def refuse(*a, **k):
        raise graph_format.Unsupported("test")

    monkeypatch.setattr(graph_format, "dump", refuse)
    SG.step_graph(_model(), "chunk")
    assert set(_entry_doc(cache)) == {"about", "program", "constants"}
    model = _model()
    sg = SG.step_graph(model, "chunk")
    assert sg.from_cache
    ids = torch.randint(0, 3000, (2, 5), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        ref = model(input_ids=ids).logits[:, -1]
        got = sg.gm(*sg.inputs(ids, torch.ones_like(ids), torch.arange(5).expand(2, -1)))[0]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_loaded_graph_sweeps_and_generates_like_pyvene_and_hf(cache, which):
    """The own format, end to end: a graph loaded by a new model object (nothing in memory) has the
    fresh export's nodes and metadata, and a prefix sweep and generation on it give pyvene 0.1.8's
    and Hugging Face's numbers."""
    import pyvene
    from conftest import make_gpt2, make_llama

    import fxvene as pv

    make = (lambda: make_gpt2(n_layer=2)) if which == "gpt2" else (lambda: make_llama(n_layer=2))
    fresh = SG.step_graph(make(), "chunk")
    assert not fresh.from_cache
    doc = _entry_doc(cache)
    assert "graph" in doc
    if doc["constants"]:  # only small tensors the trace made itself; the weights are the model's
        import base64

        from safetensors.torch import load as st_load

        assert all(t.numel() <= 16 for t in st_load(base64.b64decode(doc["constants"])).values())
    model = make()
    loaded = SG.step_graph(model, "chunk")
    assert loaded.from_cache
    a, b = list(fresh.gm.graph.nodes), list(loaded.gm.graph.nodes)
    assert [(n.op, n.name, str(n.target)) for n in a] == [(n.op, n.name, str(n.target)) for n in b]

    def shape(v):
        if isinstance(v, (tuple, list)):
            return type(v).__name__, [shape(x) for x in v]
        return tuple(str(d) for d in v.shape) + (str(v.dtype),) if isinstance(v, torch.Tensor) else str(v)

    assert [shape(n.meta.get("val")) for n in a] == [shape(n.meta.get("val")) for n in b]
    assert [n.meta.get("nn_module_stack") for n in a] == [n.meta.get("nn_module_stack") for n in b]

    g = torch.Generator().manual_seed(3)
    base = {"input_ids": torch.randint(1, 50, (1, 6), generator=g)}
    src = {"input_ids": torch.randint(1, 50, (1, 6), generator=g)}
    r = pv.patching_sweep(model, base, src, components=["block_output"], prefix=True, progress=False)
    for layer, pos in ((0, 1), (1, 4)):
        iv = pyvene.IntervenableModel(
            pyvene.IntervenableConfig([pyvene.RepresentationConfig(layer, "block_output")]), model
        )
        _, out = iv(base, [src], unit_locations={"sources->base": pos})
        torch.testing.assert_close(r.values[0, layer, pos], out.logits[:, -1], atol=1e-5, rtol=1e-5)

    im = pv.IntervenableModel(
        {"layer": 1, "component": "mlp_output", "intervention_type": pv.AdditionIntervention}, model
    )
    vec = torch.zeros(model.config.hidden_size)  # a zero steering vector: HF's own greedy text
    kw = dict(max_new_tokens=4, do_sample=False, eos_token_id=None, pad_token_id=0)
    _, out = im.generate(base, source_representations=vec, **kw)
    with torch.no_grad():
        ref = model.generate(**base, attention_mask=torch.ones_like(base["input_ids"]), **kw)
    assert torch.equal(out, ref)
