"""Readable sweep results (fxvene/sweeps/results.py): summaries without tensor dumps, ``top(k)`` and
``to_dataframe()`` checked cell by cell against the result's own tensors (brute force), and the
causal-trace figure's labels read back from the matplotlib axes."""

import itertools
import os
import re

import pytest
import torch
from conftest import make_gpt2

import fxvene as pv
from fxvene.sweeps.results import CausalTraceResult, SweepResult, clean_token

DEMO = pv.demo_model_path()
HAVE_DEMO = os.path.isfile(os.path.join(DEMO, "tokenizer.json"))


def synthetic_sweep(heads=False, tokens=(7, 11, 3)):
    g = torch.Generator().manual_seed(0)
    shape = [2, 3, 4] + ([2] if heads else []) + [2, len(tokens)]
    values = torch.randn(*shape, generator=g)
    base = torch.randn(2, len(tokens), generator=g)
    return SweepResult(
        values,
        base,
        ["block_output", "mlp_output"],
        [0, 2, 5],
        [1, 2, 3, 4],
        heads=[0, 3] if heads else None,
        tokens=list(tokens),
        metric="logits",
    )


def brute_force_cells(res):
    """Every (record, effect) by explicit loops over the tensor's indices."""
    cells = []
    ranges = [range(n) for n in res.values.shape]
    for idx in itertools.product(*ranges):
        ci, li, pi = idx[:3]
        e, k = idx[-2], idx[-1]
        value = float(res.values[idx])
        base = float(res.base[e, k])
        rec = {"component": res.components[ci], "layer": res.layers[li], "position": res.positions[pi]}
        if res.heads is not None:
            rec["head"] = res.heads[idx[3]]
        rec.update(
            example=e, token=res.tokens[k] if res.tokens is not None else k, value=value, base=base, effect=value - base
        )
        cells.append(rec)
    return cells


def no_tensor_dump(text, values):
    assert "tensor(" not in text and "[[" not in text, text
    assert len(text.splitlines()) <= 12
    # a few numbers (the best cells), not the tensor's
    assert len(re.findall(r"-?\d+\.\d+(?:e[-+]?\d+)?", text)) <= 16 < values.numel(), text


@pytest.mark.parametrize("heads", [False, True])
def test_sweep_repr_is_a_summary(heads):
    res = synthetic_sweep(heads)
    text = repr(res)
    no_tensor_dump(text, res.values)
    assert text.startswith("SweepResult: last-position logits of tokens [7, 11, 3]")
    axes = "2 components x 3 layers x 4 positions x " + ("2 heads x " if heads else "") + "2 examples x 3 tokens"
    assert axes in text
    assert "components block_output, mlp_output; layers [0, 2, 5]; positions 1..4" in text
    best = res.top(1)[0]
    assert f"{best['effect']:+.4g}" in text  # the best cell is named


@pytest.mark.parametrize("heads", [False, True])
@pytest.mark.parametrize("by", ["effect", "abs_effect", "value"])
def test_sweep_top_k_against_the_tensor(heads, by):
    res = synthetic_sweep(heads)
    key = {"effect": lambda r: r["effect"], "abs_effect": lambda r: abs(r["effect"]), "value": lambda r: r["value"]}[by]
    expected = sorted(brute_force_cells(res), key=key, reverse=True)[:5]
    got = res.top(5, by=by)
    assert [{k: r[k] for k in r if k not in ("value", "base", "effect")} for r in got] == [
        {k: r[k] for k in r if k not in ("value", "base", "effect")} for r in expected
    ]
    for g, e in zip(got, expected):
        assert g["value"] == pytest.approx(e["value"]) and g["effect"] == pytest.approx(e["effect"])
        assert all(type(v) in (str, int, float) for v in g.values()), g  # plain Python values, no tensors
    assert [key(r) for r in got] == sorted((key(r) for r in got), reverse=True)
    assert len(res.top(10_000)) == res.values.numel()


def test_top_rejects_bad_arguments():
    res = synthetic_sweep()
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must be a positive int"):
            res.top(bad)
    with pytest.raises(ValueError, match="by must be one of"):
        res.top(3, by="size")


def test_sweep_to_dataframe_rows_match_the_tensor():
    pytest.importorskip("pandas")
    for heads in (False, True):
        res = synthetic_sweep(heads)
        df = res.to_dataframe()
        expected = brute_force_cells(res)
        assert len(df) == res.values.numel() == len(expected)
        cols = ["component", "layer", "position"] + (["head"] if heads else []) + ["example", "token"]
        assert list(df.columns) == cols + ["value", "base", "effect"]
        for row, exp in zip(df.to_dict("records"), expected):
            assert {c: row[c] for c in cols} == {c: exp[c] for c in cols}
            for c in ("value", "base", "effect"):
                assert row[c] == pytest.approx(exp[c], abs=1e-6)
    sub = synthetic_sweep().to_dataframe(tokens=[11])
    assert set(sub["token"]) == {11} and len(sub) == 2 * 3 * 4 * 2
    with pytest.raises(ValueError, match=r"tokens: \[99\] are not in this sweep's readout"):
        synthetic_sweep().to_dataframe(tokens=[99])


def test_whole_vocabulary_dataframe_needs_tokens():
    pytest.importorskip("pandas")
    res = SweepResult(torch.randn(1, 2, 3, 1, 5000), torch.randn(1, 5000), ["block_output"], [0, 1], [0, 1, 2])
    with pytest.raises(ValueError, match="5000 columns"):
        res.to_dataframe()
    df = res.to_dataframe(tokens=[4242])
    assert df["value"].tolist() == pytest.approx(res.values[..., 4242].reshape(-1).tolist())


def test_to_dataframe_without_pandas(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas -> ImportError
    with pytest.raises(ImportError, match="needs pandas, which fxvene does not depend on: pip install pandas"):
        synthetic_sweep().to_dataframe()
    with pytest.raises(ImportError, match="needs pandas"):
        synthetic_trace().to_dataframe()


def test_real_sweep_records_its_readout():
    model = make_gpt2()
    g = torch.Generator().manual_seed(1)
    base = {"input_ids": torch.randint(0, 50, (1, 6), generator=g)}
    source = {"input_ids": torch.randint(0, 50, (1, 6), generator=g)}
    res = pv.patching_sweep(model, base, source, "block_output", tokens=[5, 9], metric="prob")
    assert res.tokens == [5, 9] and res.metric == "prob"
    text = repr(res)
    no_tensor_dump(text, res.values)
    assert "last-position probabilities of tokens [5, 9]" in text and "4 layers x 6 positions" in text
    best = res.top(1)[0]
    flat = (res.values - res.base).reshape(-1)
    assert best["effect"] == pytest.approx(float(flat.max()), abs=1e-6)


# ------------------------------------------------------------------------------------ causal tracing


def demo_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(DEMO)


def synthetic_trace(input_ids=None, target=559):
    g = torch.Generator().manual_seed(2)
    ids = input_ids or [218, 566, 515, 655, 654, 633]
    probs = torch.rand(3, len(ids), 12, generator=g) * 0.9 + 0.01
    return CausalTraceResult(
        probs,
        0.93,
        0.02,
        ["block_output", "mlp_activation", "attention_output"],
        list(range(len(ids))),
        list(range(12)),
        10,
        [1, 2],
        target,
        0.38,
        10,
        input_ids=ids,
        n_layers=12,
    )


def test_trace_repr_is_a_summary():
    res = synthetic_trace()
    text = repr(res)
    no_tensor_dump(text, res.probs)
    assert text.startswith("CausalTraceResult: p(token 559)")
    assert "clean 0.9300, subject corrupted 0.0200" in text and "10 samples" in text
    assert "3 streams x 6 positions x 12 layers" in text
    assert "mlp_activation (window 10)" in text
    for s, st in enumerate(res.streams):
        p, l = divmod(int(res.probs[s].argmax()), 12)
        assert f"{st:<16} token '#{res.input_ids[p]}'" in text and f"layer {l}: {float(res.probs[s].max()):.4f}" in text


@pytest.mark.skipif(not HAVE_DEMO, reason="the demo model's tokenizer is not installed")
def test_trace_decode_names_tokens():
    res = synthetic_trace().decode(demo_tokenizer())
    assert res.tokens == ["The", " Space", " Needle", " is", " in", " downtown"] and res.target_text == " Seattle"
    text = repr(res)
    assert text.startswith("CausalTraceResult: p(\" Seattle\") after 'The Space Needle is in downtown'")
    assert "subject 'Space', 'Needle'" in text
    assert res.top(1)[0]["token"] in {"The", "Space", "Needle", "is", "in", "downtown"}


def test_trace_top_k_against_the_tensor():
    res = synthetic_trace()
    cells = [(float(res.probs[s, p, l]), res.streams[s], p, l) for s in range(3) for p in range(6) for l in range(12)]
    expected = sorted(cells, reverse=True)[:7]
    got = res.top(7)
    assert [(r["stream"], r["position"], r["layer"]) for r in got] == [(s, p, l) for _, s, p, l in expected]
    assert [r["prob"] for r in got] == pytest.approx([v for v, *_ in expected])
    assert all(r["effect"] == pytest.approx(r["prob"] - 0.02) for r in got)
    assert all(r["subject"] == (r["position"] in (1, 2)) for r in got)
    assert all(type(v) in (str, int, float, bool, list) for r in got for v in r.values())
    for r in got:  # ROME's window, clipped to the model's layers
        lo, hi = max(0, r["layer"] - 5), min(12, r["layer"] + 5)
        assert r["restored_layers"] == ([r["layer"]] if r["stream"] == "block_output" else list(range(lo, hi)))
    mlp = res.top(4, stream="mlp_activation")
    ref = sorted(((float(res.probs[1, p, l]), p, l) for p in range(6) for l in range(12)), reverse=True)[:4]
    assert [(r["position"], r["layer"]) for r in mlp] == [(p, l) for _, p, l in ref]
    assert {r["stream"] for r in mlp} == {"mlp_activation"}
    assert len(res.top(1000, stream="attention_output")) == 72
    with pytest.raises(ValueError, match="stream must be one of"):
        res.top(3, stream="mlp_output")


def test_trace_to_dataframe_rows_match_the_tensor():
    pytest.importorskip("pandas")
    res = synthetic_trace()
    df = res.to_dataframe()
    assert len(df) == res.probs.numel()
    assert list(df.columns) == [
        "stream",
        "position",
        "token",
        "subject",
        "layer",
        "first_layer",
        "last_layer",
        "prob",
        "effect",
    ]
    for row, (s, p, l) in zip(df.to_dict("records"), itertools.product(range(3), range(6), range(12))):
        assert (row["stream"], row["position"], row["layer"]) == (res.streams[s], p, l)
        assert row["prob"] == pytest.approx(float(res.probs[s, p, l]))
        assert row["effect"] == pytest.approx(float(res.probs[s, p, l]) - 0.02)
        assert row["subject"] == (p in (1, 2))
        if s == 0:
            assert row["first_layer"] == row["last_layer"] == l
        else:
            assert (row["first_layer"], row["last_layer"]) == (max(0, l - 5), min(11, l + 4))


def test_clean_token():
    assert clean_token("ĠSeattle") == "Seattle"
    assert clean_token("▁Paris") == "Paris"
    assert clean_token(" is") == "is"
    assert clean_token("Ċ") == "\\n"
    assert clean_token("Ġ") == "␣"


# ------------------------------------------------------------------------------------ the figure


def figure_text(fig):
    """Panel titles, colour-bar labels, x labels, y tick labels and the suptitle of a figure."""
    panels = [ax for ax in fig.axes if ax.get_title()]
    bars = [ax for ax in fig.axes if not ax.get_title()]
    return {
        "titles": [ax.get_title() for ax in panels],
        "xlabels": [ax.get_xlabel() for ax in panels],
        "yticks": [t.get_text() for t in panels[0].get_yticklabels()],
        "bold": [t.get_fontweight() for t in panels[0].get_yticklabels()],
        "bars": [ax.get_ylabel() for ax in bars],
        "suptitle": fig.get_suptitle(),
    }


@pytest.mark.skipif(not HAVE_DEMO, reason="the demo model's tokenizer is not installed")
def test_plot_labels_with_a_tokenizer(tmp_path):
    pytest.importorskip("matplotlib")
    res = synthetic_trace()
    fig = pv.plot_causal_trace(res, tokenizer=demo_tokenizer(), path=tmp_path / "ct.png")
    t = figure_text(fig)
    assert t["titles"] == ["hidden state", "MLP", "attention"]
    assert t["bars"] == ['p(" Seattle")'] * 3
    assert t["xlabels"] == [
        "single restored layer",
        "center of interval of 10 restored MLP layers",
        "center of interval of 10 restored attention layers",
    ]
    assert t["yticks"] == ["The", "Space*", "Needle*", "is", "in", "downtown"]
    assert [w == "bold" for w in t["bold"]] == [False, True, True, False, False, False]
    assert '"The Space Needle is in downtown"' in t["suptitle"]
    assert 'p(" Seattle"): clean 0.930, subject corrupted 0.020' in t["suptitle"]
    assert (tmp_path / "ct.png").stat().st_size > 10_000
    # the other panels show no token labels of their own (the rows are shared)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert all(not ax.yaxis.get_tick_params()["labelleft"] for ax in panels[1:])


@pytest.mark.skipif(not HAVE_DEMO, reason="the demo model's tokenizer is not installed")
def test_plot_tokens_from_tokenize_lose_their_markers(tmp_path):
    pytest.importorskip("matplotlib")
    tok = demo_tokenizer()
    res = synthetic_trace()
    pieces = tok.tokenize("The Space Needle is in downtown")
    assert any("Ġ" in p for p in pieces)  # what the README's older snippet passed
    fig = pv.plot_causal_trace(res, tokens=pieces, path=tmp_path / "ct.png", title="my prompt")
    t = figure_text(fig)
    assert t["yticks"] == ["The", "Space*", "Needle*", "is", "in", "downtown"]
    assert not any("Ġ" in y for y in t["yticks"])
    assert t["suptitle"].startswith("my prompt\n") and t["bars"] == ["p(token 559)"] * 3


def test_plot_without_labels_and_bad_labels(tmp_path):
    pytest.importorskip("matplotlib")
    res = synthetic_trace()
    fig = pv.plot_causal_trace(res, path=tmp_path / "ct.svg")
    t = figure_text(fig)
    assert t["yticks"] == ["#218", "#566*", "#515*", "#655", "#654", "#633"]
    assert "clean 0.930, subject corrupted 0.020" in t["suptitle"]
    assert (tmp_path / "ct.svg").read_text().lstrip().startswith("<?xml")
    with pytest.raises(ValueError, match="tokens: 2 labels for 6 positions"):
        pv.plot_causal_trace(res, tokens=["a", "b"])
    with pytest.raises(TypeError, match="result must be a CausalTraceResult"):
        pv.plot_causal_trace(synthetic_sweep())


def test_real_trace_fills_ids_and_layers(tmp_path):
    model = make_gpt2()
    ids = torch.tensor([[3, 14, 15, 9, 26, 5]])
    res = pv.causal_trace(
        model,
        {"input_ids": ids},
        [1, 2],
        7,
        n_samples=2,
        streams=("block_output", "mlp_activation"),
        window=3,
        progress=False,
    )
    assert res.input_ids == ids[0].tolist() and res.n_layers == 4
    text = repr(res)
    no_tensor_dump(text, res.probs)
    assert "2 streams x 6 positions x 4 layers" in text and "mlp_activation (window 3)" in text
    r = res.top(1, stream="mlp_activation")[0]
    assert r["restored_layers"] == list(range(max(0, r["layer"] - 1), min(4, r["layer"] + 2)))
    assert r["prob"] == pytest.approx(float(res.probs[1].max()))
