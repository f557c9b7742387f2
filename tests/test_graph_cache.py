"""The on-disk graph cache: reused across processes, validated on load, pickle-free, weight-free,
safe between concurrent writers, and clearable. Outputs are compared with the HF model's own."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from fxvene import graph_cache, tracing
from fxvene import step_graphs as SG

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
CHILD = BUILD + """
import json, sys
from fxvene import tracing
from fxvene.step_graphs import _flat_cache, step_graph
sg = step_graph(model, "chunk")
tg = tracing.trace(model, tracer="export")
g = torch.Generator().manual_seed(3)
ids = torch.randint(0, 3000, (3, 9), generator=g)
mask = torch.ones_like(ids)
with torch.no_grad():
    ref = model(input_ids=ids, attention_mask=mask).logits
    past = _flat_cache(model(input_ids=ids[:, :4], use_cache=True).past_key_values)
    got_chunk = sg.gm(ids[:, 4:], mask, torch.arange(4, 9).expand(3, -1), *past)[0]
    got_fwd = tg.wrap_outputs(tg.gm(input_ids=ids, attention_mask=mask)).logits
print(json.dumps({
    "chunk_from_cache": sg.from_cache, "forward_from_cache": tg.meta["from_cache"],
    "chunk_diff": float((got_chunk - ref[:, -1]).abs().max()), "forward_diff": float((got_fwd - ref).abs().max()),
}))
"""


def _env(cache):
    env = dict(os.environ)
    env["FXVENE_CACHE_DIR"] = str(cache)
    env.pop("FXVENE_CACHE", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _child(cache, script=CHILD):
    return subprocess.Popen([sys.executable, "-c", script], env=_env(cache), cwd=str(ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


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


def test_second_process_loads_from_cache_and_matches_hf(cache):
    first, err1 = _result(_child(cache))
    assert not first["chunk_from_cache"] and not first["forward_from_cache"]
    assert len(list(cache.glob("*.fxgraph.json"))) == 2
    second, _ = _result(_child(cache))
    assert second["chunk_from_cache"] and second["forward_from_cache"]
    for r in (first, second):
        assert r["chunk_diff"] < 1e-4 and r["forward_diff"] < 1e-4, r


def test_cache_holds_json_only_no_pickle_no_weights(cache):
    model = _model()
    SG.step_graph(model, "chunk")
    tracing.trace(model, tracer="export")
    files = _files(cache)
    assert files and all(p.name.endswith(".fxgraph.json") for p in files)  # nothing else: no .pt, no temp files
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    total = 0
    for p in files:
        raw = p.read_bytes()
        total += len(raw)
        assert raw[:1] == b"{" and b"\x80\x02" not in raw and b"\x80\x04" not in raw  # pickle protocol headers
        doc = json.loads(raw)
        assert set(doc) == {"about", "program", "constants"}
        json.loads(doc["program"])  # the program is JSON too
        if doc["constants"]:  # safetensors bytes: an 8-byte header length, then a JSON header
            import base64

            blob = base64.b64decode(doc["constants"])
            n = int.from_bytes(blob[:8], "little")
            header = json.loads(blob[8:8 + n])
            assert all(v["shape"] == [] or int(torch.tensor(v["shape"]).prod()) <= 16
                       for k, v in header.items() if k != "__metadata__")
    assert total < weight_bytes / 4, (total, weight_bytes)


def _corrupt_truncate(path):
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _corrupt_semantics(path):
    doc = json.loads(path.read_text())
    assert "torch.ops.aten.add.Tensor" in doc["program"]
    doc["program"] = doc["program"].replace("torch.ops.aten.add.Tensor", "torch.ops.aten.sub.Tensor")
    path.write_text(json.dumps(doc))


def _corrupt_code(path):
    doc = json.loads(path.read_text())
    assert '"expr_str": "' in doc["program"]
    doc["program"] = doc["program"].replace('"expr_str": "', '"expr_str": "__import__(\'os\').getpid() + ', 1)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("corrupt", [_corrupt_truncate, _corrupt_semantics, _corrupt_code])
def test_corrupt_entry_is_detected_and_re_exported(cache, corrupt, caplog):
    import logging

    SG.step_graph(_model(), "chunk")
    (entry,) = cache.glob("*.fxgraph.json")
    corrupt(entry)
    model = _model()  # a new model object: nothing in memory, the file is all there is
    with caplog.at_level(logging.DEBUG, logger="fxvene.graph_cache"):
        sg = SG.step_graph(model, "chunk")
    assert not sg.from_cache
    assert any("discarding" in r.getMessage() for r in caplog.records)
    assert all(r.levelno <= logging.DEBUG for r in caplog.records if r.name.startswith("fxvene"))
    ids = torch.randint(0, 3000, (2, 6), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(input_ids=ids).logits[:, -1]
        got = sg.gm(*sg.inputs(ids, torch.ones_like(ids), torch.arange(6).expand(2, -1)))[0]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # the entry was written again, whole: a third model loads it
    again = SG.step_graph(_model(), "chunk")
    assert again.from_cache


def test_concurrent_writers_leave_a_valid_entry(cache):
    procs = [_child(cache), _child(cache)]
    for p in procs:
        r, _ = _result(p)
        assert r["chunk_diff"] < 1e-4 and r["forward_diff"] < 1e-4
    files = _files(cache)
    assert len(files) == 2 and all(p.name.endswith(".fxgraph.json") for p in files)  # no temp files left
    model = _model()
    assert SG.step_graph(model, "chunk").from_cache
    assert tracing.trace(model, tracer="export").meta["from_cache"]


def test_clear_and_info(cache):
    assert graph_cache.cache_info()["entries"] == 0
    SG.step_graph(_model(), "chunk")
    info = graph_cache.cache_info()
    assert info["dir"] == str(cache) and info["entries"] == 1 and info["graphs"][0]["kind"] == "step:chunk"
    assert "GPT2LMHeadModel" in info["graphs"][0]["model"]
    assert graph_cache.clear_graph_cache() == 1
    assert list(cache.iterdir()) == []
    assert not SG.step_graph(_model(), "chunk").from_cache


def test_disabled_cache_writes_nothing(cache, monkeypatch):
    monkeypatch.setenv("FXVENE_CACHE", "0")
    SG.step_graph(_model(), "chunk")
    assert not cache.exists() or list(cache.iterdir()) == []


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


def test_one_export_serves_prefill_decode_and_chunk(monkeypatch):
    """Generation and sweeps share the chunk graph: a process exports one KV-cache graph."""
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
    assert pre.empty_past and pre.gm is chunk.gm and dec.gm is chunk.gm
    ids = torch.randint(0, 3000, (2, 5), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = m(input_ids=ids).logits[:, -1]
        got = pre.gm(*pre.inputs(ids, torch.ones_like(ids), torch.arange(5).expand(2, -1)))[0]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_cache_cli(cache, capsys):
    from fxvene.cli import main

    SG.step_graph(_model(), "chunk")
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert str(cache) in out and "1 graph" in out and "step:chunk" in out
    assert main(["cache", "clear"]) == 0
    assert "removed 1" in capsys.readouterr().out
    assert list(cache.iterdir()) == []


def test_progress_messages_and_quiet(cache, capfd, monkeypatch):
    from fxvene import progress

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
    from fxvene import progress

    monkeypatch.setattr(progress, "_LEVEL", 1)
    orig = progress.progress
    monkeypatch.setattr(SG, "progress", lambda what, **k: orig(what, delay=0))
    SG.step_graph(_model(), "chunk")
    err = capfd.readouterr().err
    assert "fxvene: exporting GPT2LMHeadModel with a KV cache" in err and "done in" in err
    SG.step_graph(_model(), "chunk")
    err = capfd.readouterr().err
    assert "fxvene: loading the KV-cache graph of GPT2LMHeadModel from the graph cache" in err


def test_top_level_names(cache):
    import fxvene as pv

    assert pv.clear_graph_cache is graph_cache.clear_graph_cache
    from fxvene import progress

    assert pv.set_verbosity is progress.set_verbosity
    SG.step_graph(_model(), "chunk")
    assert pv.clear_graph_cache() == 1
