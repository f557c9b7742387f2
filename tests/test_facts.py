"""Dataset sweeps (issue 15): causal tracing and patching over many facts.

Oracles: HF forward hooks (noise at the first block's input, the clean state restored at one
position and layer), each prompt's own one-prompt call (the dataset call's specification; those
calls are checked against pyvene in test_sweep.py), and ROME's averaging loop written out here.
"""

import json
import math

import numpy as np
import pytest
import torch
from conftest import make_gpt2

import fxvene as pv
from fxvene.sweeps.core import window_layers
from fxvene.sweeps.datasets import plan_batches, plan_memory
from fxvene.sweeps.facts import load_facts
from fxvene.sweeps.facts_results import CLASSES, plot_class_heatmaps, plot_class_lines

NOISE = 0.5
# token records of three lengths; subjects of 1-3 tokens, at the start, middle and just before the end
RECORDS = [
    {"input_ids": [5, 9, 13, 2, 44, 7], "subject_positions": [1, 2], "target_token": 11},
    {"input_ids": [3, 8, 21, 30, 4], "subject_positions": [0], "target_token": 17},
    {"input_ids": [6, 12, 19, 25, 33, 40], "subject_positions": [2, 3, 4], "target_token": 2},
    {"input_ids": [7, 14, 28, 35, 42], "subject_positions": [1, 2, 3], "target_token": 9},
    {"input_ids": [1, 2, 3, 4, 5, 6, 7], "subject_positions": [5, 6], "target_token": 30},
    {"input_ids": [10, 11, 12, 13, 14, 15], "subject_positions": [0, 1], "target_token": 23},
]
KW = dict(n_samples=2, window=2, noise_level=NOISE, only_correct=False, progress=False)


@pytest.fixture(scope="module")
def g3():
    return make_gpt2(n_layer=3)


@pytest.fixture(scope="module")
def traced(g3):
    return pv.causal_trace(g3, RECORDS, **KW)


def test_each_prompt_equals_its_own_call(g3, traced):
    assert len(traced) == len(RECORDS) and traced.memory["batch_prompts"] > 1  # same-length prompts ran together
    assert [f.index for f in traced.facts] == list(range(len(RECORDS)))
    for rec, res in zip(RECORDS, traced):
        one = pv.causal_trace(
            g3,
            {"input_ids": torch.tensor([rec["input_ids"]])},
            rec["subject_positions"],
            rec["target_token"],
            progress=False,
            **{k: v for k, v in KW.items() if k != "only_correct" and k != "progress"},
        )
        torch.testing.assert_close(res.probs, one.probs, atol=2e-6, rtol=0)
        assert res.clean_prob == pytest.approx(one.clean_prob, abs=1e-6)
        assert res.corrupted_prob == pytest.approx(one.corrupted_prob, abs=1e-6)
        assert res.subject_positions == rec["subject_positions"] and res.positions == list(range(len(rec["input_ids"])))


def _block_input_hook(model, fn):
    def pre(mod, args, kwargs):
        if args:
            return (fn(args[0]),) + tuple(args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = fn(kwargs["hidden_states"])
        return args, kwargs

    return model.transformer.h[0].register_forward_pre_hook(pre, with_kwargs=True)


def _replace_output(module, fn):
    def hook(mod, args, out):
        if isinstance(out, tuple):
            return (fn(out[0]),) + tuple(out[1:])
        return fn(out)

    return module.register_forward_hook(hook)


def _out(x):
    return x[0] if isinstance(x, tuple) else x


def test_batched_prompt_equals_hooked_hf_restores(g3, traced):
    """Prompt 0 ran in a batch with prompt 2 and 5 (6 tokens each): cells against an HF forward with hooks."""
    rec, res = RECORDS[0], traced[0]
    ids = torch.tensor([rec["input_ids"]]).expand(2, -1)
    subj = rec["subject_positions"]
    noise = torch.from_numpy(np.random.RandomState(1).randn(2, len(subj), 24))

    def corrupt(x):
        x = x.clone()
        x[:, subj] = (x[:, subj].double() + NOISE * noise).to(x.dtype)
        return x

    clean = {}
    hooks = [
        _replace_output(g3.transformer.h[l], lambda x, l=l: clean.__setitem__(("b", l), x.clone()) or x)
        for l in range(3)
    ]
    hooks += [
        _replace_output(g3.transformer.h[l].mlp.act, lambda x, l=l: clean.__setitem__(("m", l), x.clone()) or x)
        for l in range(3)
    ]
    with torch.no_grad():
        g3(input_ids=ids[:1])
    for h in hooks:
        h.remove()

    def run(restores):
        hs = [_block_input_hook(g3, corrupt)]
        for kind, l, p in restores:
            mod = g3.transformer.h[l] if kind == "b" else g3.transformer.h[l].mlp.act

            def put(x, kind=kind, l=l, p=p):
                x = x.clone()
                x[:, p] = _out(clean[(kind, l)])[0, p]
                return x

            hs.append(_replace_output(mod, put))
        try:
            with torch.no_grad():
                return float(torch.softmax(g3(input_ids=ids).logits[:, -1].float(), -1)[:, rec["target_token"]].mean())
        finally:
            for h in hs:
                h.remove()

    assert res.corrupted_prob == pytest.approx(run([]), abs=1e-6)
    b, m = res.streams.index("block_output"), res.streams.index("mlp_activation")
    for p in (0, 2, 5):
        for l in range(3):
            assert float(res.probs[b, p, l]) == pytest.approx(run([("b", l, p)]), abs=2e-6)
            window = window_layers(l, 2, 3)
            assert float(res.probs[m, p, l]) == pytest.approx(run([("m", w, p) for w in window]), abs=2e-6)


def rows_by_class(traced, of):
    """ROME's loop (first_e, first_a = subject range; middle and further tokens one sample each) over
    ``of(result)[position, stream, layer]``."""
    sums = {c: [] for c in CLASSES}
    for r in traced:
        scores = of(r)
        first_e, first_a = r.subject_positions[0], r.subject_positions[-1] + 1
        last_e, last_a = first_a - 1, len(r.positions) - 1
        sums["first subject token"].append(scores[first_e])
        sums["middle subject tokens"] += list(scores[first_e + 1 : last_e])
        sums["last subject token"].append(scores[last_e])
        if first_a <= last_a:
            sums["first subsequent token"].append(scores[first_a])
        sums["further tokens"] += list(scores[first_a + 1 : last_a])
        sums["last token"].append(scores[last_a])
    return sums


def test_rome_averages_by_token_class(traced):
    te = [r.clean_prob - r.corrupted_prob for r in traced]
    # per prompt: the mean over a class's rows of each prompt's own restored - corrupted
    sums = rows_by_class(traced, lambda r: (r.probs - r.corrupted_prob).permute(1, 0, 2).double())
    s = traced.summary(definition="per_prompt")
    assert list(s.classes) == list(CLASSES) and s.definition == "per_prompt"
    for c, name in enumerate(CLASSES):
        assert s.counts[c] == len(sums[name])
        torch.testing.assert_close(s.aie[:, c], torch.stack(sums[name]).mean(0), atol=1e-12, rtol=0)
    # ROME's (the default): the mean restored p over a class's rows - the mean corrupted p over all prompts
    low = sum(r.corrupted_prob for r in traced) / len(traced)
    restored = rows_by_class(traced, lambda r: r.probs.permute(1, 0, 2).double())
    rome = traced.summary()
    assert rome.definition == "rome" and traced.summary(definition="rome") is rome and rome.counts == s.counts
    for c, name in enumerate(CLASSES):
        torch.testing.assert_close(rome.aie[:, c], torch.stack(restored[name]).mean(0) - low, atol=1e-12, rtol=0)
    one_row = [CLASSES.index(c) for c in ("first subject token", "last subject token", "last token")]
    torch.testing.assert_close(rome.aie[:, one_row], s.aie[:, one_row], atol=1e-7, rtol=0)  # one row per prompt
    assert (rome.aie[:, 1] - s.aie[:, 1]).abs().max() > 1e-6  # middle subject tokens: not every prompt has them
    with pytest.raises(ValueError, match="definition must be 'rome' or 'per_prompt'"):
        traced.summary(definition="ROME")
    assert s.counts == [6, 2, 6, 5, 5, 6]  # record 4: the subject ends the prompt
    assert s.total["ate"] == pytest.approx(sum(te) / len(te), abs=1e-12)
    assert "ATE" in repr(traced) and "last subject token" in repr(s)
    json.dumps(s.to_dict())  # JSON-ready (NaN as null)


def test_only_facts_the_model_gets_right_are_traced(g3):
    with torch.no_grad():
        top = [int(g3(input_ids=torch.tensor([r["input_ids"]])).logits[0, -1].argmax()) for r in RECORDS[:4]]
    recs = [dict(r, target_token=t if i % 2 == 0 else (t + 1) % 50) for i, (r, t) in enumerate(zip(RECORDS[:4], top))]
    res = pv.causal_trace(g3, recs, **{**KW, "only_correct": True})
    assert [f.index for f in res.facts] == [0, 2]
    assert [s["line"] for s in res.skipped] == [2, 4] and res.n_skipped == 2
    assert "the model predicts token" in res.skipped[0]["reason"] and "not the target" in res.skipped[0]["reason"]
    assert res.skipped[0]["predicted"] == top[1]
    assert "2 skipped" in repr(res)


def test_malformed_records_are_reported_by_line(tmp_path, g3):
    from fxvene.zoo.demo import load_demo

    _, tok = load_demo()
    lines = [
        '{"prompt": "The Space Needle is in downtown", "subject": "Space Needle", "target": " Seattle"}',
        '{"prompt": "The Louvre is located in", "target": " Paris"}',
        "",
        '{"prompt": "The Louvre is located in", "subject": "Eiffel Tower", "target": " Paris"}',
        '{"prompt": "The Golden Gate Bridge is in", "subject": "Golden Gate Bridge", "target": " San Francisco"}',
        "[1, 2]",
        '{"prompt": "Big Ben is in the city of", "subject": "Big Ben", "target": " London"}',
    ]
    path = tmp_path / "facts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    facts, bad = load_facts(str(path), tok)
    assert [(f.line, f.subject_positions, f.target_token) for f in facts] == [
        (1, [1, 2], tok.encode(" Seattle")[0]),
        (7, [0, 1], tok.encode(" London")[0]),
    ]
    assert [m.line for m in bad] == [2, 4, 5, 6]
    assert "missing field 'subject'" in bad[0].reason
    assert "'Eiffel Tower' does not occur" in bad[1].reason
    assert "is 2 tokens" in bad[2].reason and "exactly one" in bad[2].reason
    assert "expected a JSON object" in bad[3].reason
    for side in ("left", "right"):  # prompts are never padded: the tokenizer's padding side plays no part
        tok.padding_side = side
        assert [f.input_ids for f in load_facts(str(path), tok)[0]] == [f.input_ids for f in facts]
    model = make_gpt2(n_layer=2, vocab=len(tok))
    res = pv.causal_trace(model, str(path), tokenizer=tok, **{**KW, "streams": "block_output"})
    assert len(res) == 2 and [m.line for m in res.malformed] == [2, 4, 5, 6]
    assert "line 5: target ' San Francisco' is 2 tokens" in repr(res)
    assert res[0].tokens[1:3] == [" Space", " Needle"] and res[0].target_text == " Seattle"
    with pytest.raises(ValueError, match="tokenizer"):
        pv.causal_trace(model, str(path), **KW)
    with pytest.raises(ValueError, match="no usable record"):
        pv.causal_trace(model, [{"prompt": "x"}], tokenizer=tok, **KW)


def test_memory_plan_and_chunks(g3, traced, monkeypatch):
    # a budget bounds the prompts per batch and the rows per chunk; the numbers do not change
    bp, rows, budget = plan_memory(g3, 6, 2, 9, memory_budget="1MB")
    assert budget == 1 << 20 and 1 <= bp < 64 and rows >= 1
    bp2, rows2, _ = plan_memory(g3, 6, 2, 9, memory_budget="4MB")
    assert bp2 >= bp and rows2 > rows
    from fxvene.sweeps.engine import SweepEngine

    calls, run_rows = [], SweepEngine.run_rows

    def counted(self, base, source, rows, *a, **k):
        calls.append((len(rows["sample"]), base["batch"]))
        return run_rows(self, base, source, rows, *a, **k)

    monkeypatch.setattr(SweepEngine, "run_rows", counted)
    small = pv.causal_trace(g3, RECORDS, max_rows=7, batch_prompts=2, **KW)
    assert small.memory["max_rows"] == 7 and small.memory["batch_prompts"] == 2
    assert max(r for r, _ in calls) == 7 and max(b for _, b in calls) == 2 * 2  # rows per call; prompts x samples
    assert sum(r for r, _ in calls) == sum(3 * len(r["input_ids"]) * 3 * 2 for r in RECORDS)  # every row once
    for a, b in zip(small, traced):
        torch.testing.assert_close(a.probs, b.probs, atol=2e-6, rtol=0)
    facts, _ = load_facts(RECORDS)
    batches = plan_batches(facts, 2)
    assert [[f.index for f in b] for b in batches] == [[1, 3], [0, 2], [5], [4]]
    with pytest.raises(ValueError, match="memory_budget"):
        pv.causal_trace(g3, RECORDS, memory_budget="lots", **KW)
    with pytest.raises(ValueError, match="batch_prompts"):
        pv.causal_trace(g3, RECORDS, batch_prompts=0, **KW)


def test_subject_noise_level_is_romes(g3):
    res = pv.causal_trace(g3, RECORDS[:2], **{**KW, "noise_level": "subjects", "streams": "block_output"})
    emb = g3.transformer.wte.weight.detach()
    toks = [RECORDS[0]["input_ids"][p] for p in RECORDS[0]["subject_positions"]] + [RECORDS[1]["input_ids"][0]]
    assert res[0].noise_level == pytest.approx(3 * float(emb[toks].std()))


def test_dataset_patching_equals_per_prompt_calls(g3):
    recs = [dict(RECORDS[i], source=list(reversed(RECORDS[i]["input_ids"]))) for i in (0, 2, 1)]
    res = pv.patching_sweep(
        g3,
        recs,
        components=["block_output", "mlp_output"],
        layers=[0, 2],
        metric="prob",
        only_correct=False,
        progress=False,
    )
    assert len(res) == 3
    for rec, r in zip(recs, res):
        one = pv.patching_sweep(
            g3,
            {"input_ids": torch.tensor([rec["input_ids"]])},
            {"input_ids": torch.tensor([rec["source"]])},
            components=["block_output", "mlp_output"],
            layers=[0, 2],
            tokens=[rec["target_token"]],
            metric="prob",
            progress=False,
        )
        torch.testing.assert_close(r.values, one.values, atol=2e-6, rtol=0)
        torch.testing.assert_close(r.base, one.base, atol=2e-6, rtol=0)
    s = res.summary()
    assert s.kind == "patch" and s.quantity == "p(target)" and s.effect.shape == (2, 6, 2)
    last = torch.stack([r.values[:, :, -1, 0, 0] - r.base[0, 0] for r in res]).mean(0)  # [component, layer]
    torch.testing.assert_close(s.effect[:, CLASSES.index("last token")], last.double(), atol=1e-7, rtol=0)
    with pytest.raises(ValueError, match="source"):
        pv.patching_sweep(g3, [dict(RECORDS[0], source=[1, 2])], only_correct=False, progress=False)


def test_figures_are_labelled(traced, tmp_path):
    pytest.importorskip("matplotlib")
    fig = traced.plot(path=str(tmp_path / "aie.png"))
    assert (tmp_path / "aie.png").stat().st_size > 0
    axes = [a for a in fig.axes if a.get_title()]
    assert [a.get_title() for a in axes] == ["hidden state", "MLP (window 2)", "attention (window 2)"]
    assert [t.get_text() for t in axes[0].get_yticklabels()] == list(CLASSES)
    assert axes[0].get_xlabel() == "single restored layer"
    assert axes[1].get_xlabel() == "center of interval of 2 restored MLP layers"
    bars = [a for a in fig.axes if not a.get_title()]
    assert len(bars) == 3 and all(b.get_ylabel() == "AIE (ROME) on p(target)" for b in bars)
    assert "Average indirect effect on p(target) over 6 prompts, ROME's" in fig.get_suptitle()
    per = traced.plot(definition="per_prompt")
    assert "per prompt: mean of restored - corrupted" in per.get_suptitle()
    assert [a.get_ylabel() for a in per.axes if not a.get_title()][0] == "AIE (per prompt) on p(target)"
    lines = traced.plot_lines(path=str(tmp_path / "lines.png"))
    ax = lines.axes[0]
    assert ax.get_ylabel() == "AIE (ROME) on p(target)" and ax.get_xlabel() == "single restored layer"
    assert [t.get_text() for t in lines.axes[-1].get_legend().get_texts()] == list(CLASSES)
    y = ax.get_lines()[0].get_ydata()
    assert np.allclose(y, traced.summary().aie[0, 0].numpy())
    with pytest.raises(TypeError, match="ClassSummary"):
        plot_class_lines(object())
    with pytest.raises(TypeError, match="ClassSummary"):
        plot_class_heatmaps(traced)


def test_dataset_options_and_one_prompt_options_do_not_mix(g3):
    one = {"input_ids": torch.tensor([RECORDS[0]["input_ids"]])}
    with pytest.raises(ValueError, match="subject_positions"):
        pv.causal_trace(g3, RECORDS, [1], **KW)
    with pytest.raises(ValueError, match="positions"):
        pv.causal_trace(g3, RECORDS, positions=[0], **KW)
    with pytest.raises(TypeError, match="only_correct"):
        pv.causal_trace(g3, one, [1], 11, only_correct=False)
    with pytest.raises(TypeError, match="subject_positions and target_token"):
        pv.causal_trace(g3, one)
    with pytest.raises(ValueError, match="source"):
        pv.patching_sweep(g3, RECORDS, one)
    with pytest.raises(ValueError, match="row_groups"):
        pv.causal_trace(g3, RECORDS, row_groups=0, **KW)
    with pytest.raises(TypeError, match="JSONL file path or a list"):
        load_facts(42)
    assert math.isfinite(plan_memory(g3, 6, 2, 9)[2])
