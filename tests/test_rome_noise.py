"""ROME's noise kinds by name (issue 23, item 4): ``noise_level`` as a number, ``"s<k>"``, ``"subjects"``,
``"m"``, ``"t<d>"``, ``"u<x>"``, and ``replace=True``, in the one-prompt and the dataset call.

Oracle: each kind's noise written out here from its formula (ROME's definitions; ROME itself is not a
package) and put on the embedding layer's output by an HF forward hook, as ROME's tracer does; the
corrupted run's p(target) must match fxvene's, and the noise level fxvene reports must be the formula's.
The AIE definitions of the dataset summary are checked in test_facts.py; the command line's ``--aie``
here (``fxvene trace-facts`` on the built-in gpt2-tiny).
"""

import json
import os

import numpy as np
import pytest
import torch
from conftest import build_offline_tokenizer, make_gpt2

import fxvene as pv

N = 3  # noise samples
FACTS = [  # (prompt, subject, target word); the targets are replaced by the model's own prediction below
    ("The Eiffel Tower is in", "Eiffel Tower"),
    ("The Space Needle is in the city of", "Space Needle"),
    ("Alice gave Bob a drink in", "Alice"),  # a one-token subject
    ("John and Mary went to the store in", "John and Mary"),
]
FAST = dict(streams="block_output", prefix=False, progress=False)


@pytest.fixture(scope="module")
def setup():
    from tokenizers.processors import TemplateProcessing

    tok = build_offline_tokenizer()  # adds a BOS, so tokenizer(subject) is not the subject's span of the prompt
    tok._tokenizer.post_processor = TemplateProcessing(single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)])
    model = make_gpt2(n_layer=2, n_embd=24, vocab=len(tok), seed=3)
    records = []
    with torch.no_grad():
        for prompt, subject in FACTS:
            ids = torch.tensor([tok(prompt)["input_ids"]])
            top = int(model(input_ids=ids).logits[0, -1].argmax())
            records.append({"prompt": prompt, "subject": subject, "target": tok.decode([top])})
    return model, tok, records


def one_prompt(tok, prompt, subject):
    ids = tok(prompt)["input_ids"]
    sub = tok(subject, add_special_tokens=False)["input_ids"]
    at = next(i for i in range(len(ids)) if ids[i : i + len(sub)] == sub)
    return torch.tensor([ids]), list(range(at, at + len(sub)))


def wte(model, ids):
    return model.transformer.wte.weight.detach().double()[torch.as_tensor(ids)]


def gaussian_noise(model, corpus, n, k, seed=1):
    """ROME's "m": standard normal draws (RandomState(seed), shape (n, k, d)) through the Gaussian with the
    mean and covariance of the embedding outputs of the corpus: z @ (sqrt(S)[:, None] * Vh) + mean, the SVD
    cov = U S Vh."""
    x = torch.cat([wte(model, ids) for ids in corpus])
    mean, cov = x.mean(0), torch.cov(x.T)  # sample covariance (n - 1)
    _, s, vh = torch.linalg.svd(cov)
    z = torch.from_numpy(np.random.RandomState(seed).randn(n, k, x.shape[1]))
    return z @ (s.clamp(min=0).sqrt()[:, None] * vh) + mean


def student_noise(model, corpus, n, k, d):
    """ROME's "t<d>": the Gaussian's draws, row (sample, token) r scaled by sqrt((d - 2) / u_r), u drawn
    from chi2(d) by RandomState(2)."""
    u = np.random.RandomState(2).chisquare(d, size=n * k).reshape(n, k, 1)
    return gaussian_noise(model, corpus, n, k) * torch.from_numpy(np.sqrt((d - 2) / u))


def corrupted_p(model, ids, subj, noise, target, replace=False):
    """p(target) at the last position, averaged over the samples, with ``noise[sample, token]`` added to
    (``replace``: put in place of) the subject tokens' embedding outputs."""
    subj = torch.tensor(subj)

    def hook(mod, inp, out):
        out = out.clone()
        part = noise.to(out.dtype) if replace else out[:, subj] + noise.to(out.dtype)
        out[:, subj] = part
        return out

    h = model.transformer.wte.register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = model(input_ids=ids.expand(noise.shape[0], -1)).logits[:, -1]
    finally:
        h.remove()
    return float(torch.softmax(logits.float(), -1)[:, target].mean())


def test_one_prompt_noise_kinds(setup):
    model, tok, records = setup
    prompt, subject = FACTS[1]
    ids, subj = one_prompt(tok, prompt, subject)
    target = tok(records[1]["target"], add_special_tokens=False)["input_ids"][0]
    k, d = len(subj), model.config.n_embd
    z = torch.from_numpy(np.random.RandomState(1).randn(N, k, d))
    own = wte(model, ids[0, subj])
    corpus = ["Rome is the capital of Italy", "Paris is the capital of France"]
    cases = [  # (noise_level, replace, the noise by its formula, the level results report)
        (0.3, False, 0.3 * z, 0.3),
        (None, False, 3 * model.transformer.wte.weight.detach().float().std().item() * z, None),
        ("s2", False, 2 * own.std().item() * z, 2 * own.std().item()),  # one prompt: its subject's tokens
        ("subjects", False, 3 * own.std().item() * z, 3 * own.std().item()),
        ("u0.4", False, 0.4 * torch.from_numpy(np.random.RandomState(1).uniform(-1, 1, (N, k, d))), "u0.4"),
        ("m", False, gaussian_noise(model, [ids[0].tolist()], N, k), "m"),  # default corpus: this prompt
        ("t3", False, student_noise(model, [ids[0].tolist()], N, k, 3), "t3"),
        ("s3", True, 3 * own.std().item() * z, 3 * own.std().item()),
        ("u1", True, torch.from_numpy(np.random.RandomState(1).uniform(-1, 1, (N, k, d))), "u1"),
    ]
    for level, replace, noise, shown in cases:
        res = pv.causal_trace(
            model, {"input_ids": ids}, subj, target, noise_level=level, replace=replace, n_samples=N, **FAST
        )
        want = corrupted_p(model, ids, subj, noise, target, replace)
        assert res.corrupted_prob == pytest.approx(want, abs=1e-7), (level, replace)
        if shown is not None:
            assert res.noise_level == (pytest.approx(shown, rel=1e-6) if isinstance(shown, float) else shown)
        assert res.replace is replace and (", replacing the subject" in repr(res)) is replace
    # "m" fitted to texts of noise_corpus (tokenized with tokenizer=)
    res = pv.causal_trace(
        model,
        {"input_ids": ids},
        subj,
        target,
        noise_level="m",
        noise_corpus=corpus,
        tokenizer=tok,
        n_samples=N,
        **FAST,
    )
    noise = gaussian_noise(model, [tok(t)["input_ids"] for t in corpus], N, k)
    assert res.corrupted_prob == pytest.approx(corrupted_p(model, ids, subj, noise, target), abs=1e-7)
    # a one-token subject: "subjects" and "s<k>" are k x the std of that token's embedding, not zero
    ids1, subj1 = one_prompt(tok, *FACTS[2])
    one = pv.causal_trace(model, {"input_ids": ids1}, subj1, target, noise_level="subjects", n_samples=1, **FAST)
    assert one.noise_level == pytest.approx(3 * wte(model, ids1[0, subj1]).std().item(), rel=1e-6)
    assert one.noise_level > 0


def test_dataset_noise_kinds(setup):
    model, tok, records = setup
    wrong = dict(records[0], target=" Paris" if records[0]["target"] != " Paris" else " Rome")
    recs = [wrong] + records[1:]  # record 0: the model gets it wrong, skipped
    kw = dict(tokenizer=tok, n_samples=N, layers=[1], **FAST)
    # s3 as ROME computes it: every subject tokenized on its own (with the BOS this tokenizer adds), pooled
    # over every record given, the skipped one included
    res = pv.causal_trace(model, recs, noise_level="s3", **kw)
    assert [f.index for f in res.facts] == [1, 2, 3] and len(res.skipped) == 1
    pooled = torch.cat([wte(model, tok(r["subject"])["input_ids"]) for r in recs])
    assert tok(recs[2]["subject"])["input_ids"][0] == 0  # the BOS is part of it
    level = 3 * pooled.std().item()
    assert res.options["noise_level"] == pytest.approx(level, rel=1e-6) and res.options["noise"] == "s3"
    # "subjects" (kept): 3 x the std of the subject tokens of the traced prompts
    sub = pv.causal_trace(model, recs, noise_level="subjects", **kw)
    toks = [f.input_ids[p] for f in sub.facts for p in f.subject_positions]
    assert sub.options["noise_level"] == pytest.approx(3 * wte(model, toks).std().item(), rel=1e-6)
    assert sub.options["noise_level"] != pytest.approx(level, rel=1e-3)
    # "m" (default corpus: every record's prompt, the skipped one included), "t3", replace=True
    corpus = [tok(r["prompt"])["input_ids"] for r in recs]
    for spelling, replace in (("s3", False), ("m", False), ("t3", True)):
        got = res if spelling == "s3" else pv.causal_trace(model, recs, noise_level=spelling, replace=replace, **kw)
        assert got.options["replace"] is replace
        for f, r in zip(got.facts, got.results):
            ids, k = torch.tensor([f.input_ids]), len(f.subject_positions)
            if spelling == "s3":
                noise = level * torch.from_numpy(np.random.RandomState(1).randn(N, k, model.config.n_embd))
            elif spelling == "m":
                noise = gaussian_noise(model, corpus, N, k)
            else:
                noise = student_noise(model, corpus, N, k, 3)
            want = corrupted_p(model, ids, f.subject_positions, noise, f.target_token, replace)
            assert r.corrupted_prob == pytest.approx(want, abs=1e-7), (spelling, f.index)
            assert r.noise_level == (pytest.approx(level) if spelling == "s3" else spelling)
    # one record with a one-token subject: not zero noise
    single = pv.causal_trace(model, recs[2:3], noise_level="subjects", **kw)
    assert single.options["noise_level"] == pytest.approx(3 * wte(model, [single.facts[0].input_ids[1]]).std().item())


def test_noise_arguments_are_checked(setup):
    model, tok, records = setup
    ids, subj = one_prompt(tok, *FACTS[1])
    for level, match in (
        ("loud", "noise_level must be a number, None, 's<k>'"),
        ("t2", "'t<number>' needs degrees d > 2"),
        ("ux", "'u<number>' needs half-width"),
        (-1.0, "noise_level: a number must be finite and >= 0"),
        (True, "noise_level must be"),
    ):
        with pytest.raises(ValueError, match=match):
            pv.causal_trace(model, {"input_ids": ids}, subj, 5, noise_level=level, **FAST)
    with pytest.raises(ValueError, match="noise_corpus: only noise_level 'm' and 't<d>'"):
        pv.causal_trace(model, {"input_ids": ids}, subj, 5, noise_level="s3", noise_corpus=["a"], **FAST)
    with pytest.raises(ValueError, match="noise_corpus: text needs the model's tokenizer"):
        pv.causal_trace(model, {"input_ids": ids}, subj, 5, noise_level="m", noise_corpus=["Rome"], **FAST)
    with pytest.raises(ValueError, match="replace must be True or False"):
        pv.causal_trace(model, records, tokenizer=tok, replace="yes", **FAST)


def test_trace_facts_aie_definition(tmp_path, capsys):
    """--aie: the summary, its files and run.json say which definition (a new run: ROME's); a resume keeps
    the run's; a run.json of an older fxvene, without one, is per_prompt; another --aie on a resume is
    refused."""
    from _facts_cli import ARGS, write_facts
    from safetensors import safe_open

    from fxvene.cli import app as cli
    from fxvene.sweeps.facts_results import load_trace

    facts = write_facts(tmp_path / "facts.jsonl", n=3)
    out = str(tmp_path / "run")
    args = ["trace-facts", facts, "--out", out, *ARGS, "--streams", "block_output", "--layers", "0", "--prefix", "off"]
    args += ["--noise", "s2", "--replace"]
    assert cli.main(args) == 0
    run = json.load(open(os.path.join(out, "run.json")))
    assert run["options"]["aie"] == "rome" and run["options"]["replace"] is True
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["summary"]["definition"] == "rome" and summary["options"]["aie"] == "rome"
    with safe_open(os.path.join(out, "summary.safetensors"), "pt") as f:
        assert f.metadata()["definition"] == "rome"
    assert "AIE = ROME's: mean restored - mean corrupted" in capsys.readouterr().out
    names = sorted(n[:-5] for n in os.listdir(os.path.join(out, "prompts")) if n.endswith(".json"))
    traces = [load_trace(os.path.join(out, "prompts", n))[0] for n in names]
    assert json.load(open(os.path.join(out, "prompts", "000000.json")))["replace"] is True
    assert all(t.replace and t.noise_level > 0 for t in traces)
    low = sum(t.corrupted_prob for t in traces) / len(traces)
    last = [float(t.probs[0, -1, 0]) for t in traces]  # the last token class: one row per prompt
    assert summary["summary"]["effect"][0][5][0] == pytest.approx(sum(last) / len(last) - low, abs=1e-7)
    # a run.json of an older fxvene has no "aie": its summary was per prompt, and a resume keeps it so
    del run["options"]["aie"]
    json.dump(run, open(os.path.join(out, "run.json"), "w"))
    assert cli.main(args) == 0
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["summary"]["definition"] == "per_prompt" and summary["options"]["aie"] == "per_prompt"
    per = [float(t.probs[0, -1, 0]) - t.corrupted_prob for t in traces]
    assert summary["summary"]["effect"][0][5][0] == pytest.approx(sum(per) / len(per), abs=1e-7)
    assert "per prompt: mean of restored - corrupted" in capsys.readouterr().out
    assert cli.main([*args, "--aie", "rome"]) == 1
    assert "other options (aie per_prompt -> rome)" in capsys.readouterr().err
    assert cli.main([*args, "--noise", "t2"]) == 1
    assert "--noise must be a number, s<k>, m, t<d> (d > 2)" in capsys.readouterr().err
