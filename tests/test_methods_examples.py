"""The research-method examples on the shipped demo model: examples/ioi_path_patching.py and
examples/iti_steering.py, run in-process (fast), with their numbers checked against hand computations
(HF forward hooks) rather than against fxvene."""

import os
import re
import sys

import pytest
import torch

import fxvene as pv

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
sys.path.insert(0, EXAMPLES)

HAPPY_WORDS = (
    "happy",
    "glad",
    "cheerful",
    "joyful",
    "delighted",
    "laugh",
    "smile",
    "wonderful",
    "sing",
    "dance",
    "beautiful",
    "bright",
    "sunshine",
    "joy",
)
SAD_WORDS = (
    "sad",
    "unhappy",
    "gloomy",
    "miserable",
    "upset",
    "cry",
    "lonely",
    "terrible",
    "rain",
    "tears",
    "dark",
    "painful",
    "cold",
    "sigh",
    "alone",
)


@pytest.fixture(scope="module")
def demo():
    return pv.load_demo()


def _direct_path_by_hand(model, base, source, layer, head, metric):
    """Mean change of ``metric`` when head ``layer``.``head``'s output moves from the base to the source
    run on its direct path only: the final residual stream + (z_src - z_base)_head @ W_O[head rows], then
    ln_f and the LM head. Hooks on the HF modules read z (c_proj's input) and the last block's output."""
    got = {}
    blk = model.transformer.h
    d = model.config.n_embd // model.config.n_head
    rows = slice(head * d, (head + 1) * d)

    def run(ids, tag):
        h1 = blk[layer].attn.c_proj.register_forward_pre_hook(lambda m, a: got.__setitem__((tag, "z"), a[0]))
        h2 = blk[-1].register_forward_hook(
            lambda m, a, o: got.__setitem__((tag, "resid"), o[0] if isinstance(o, tuple) else o)
        )
        try:
            with torch.no_grad():
                return model(**ids).logits[:, -1]
        finally:
            h1.remove()
            h2.remove()

    base_logits = run(base, "base")
    run(source, "src")
    with torch.no_grad():
        dz = got[("src", "z")][..., rows] - got[("base", "z")][..., rows]
        resid = got[("base", "resid")] + dz @ blk[layer].attn.c_proj.weight[rows]
        logits = model.lm_head(model.transformer.ln_f(resid))[:, -1]
    return float((metric(logits) - metric(base_logits)).mean())


def test_ioi_example(demo, tmp_path, capsys):
    import ioi_path_patching as ioi

    out = tmp_path / "ioi.png"
    ioi.main(["--quick", "--prompts", "6", "--receivers", "2", "--out", str(out)])
    text = capsys.readouterr().out
    assert "IO wins in 6/6" in text  # the demo model does the task
    m = re.search(r"name-mover candidates \(largest drop\): L(\d+)H(\d+) ([-+][\d.]+)", text)
    assert m, text[-2000:]
    layer, head, printed = int(m.group(1)), int(m.group(2)), float(m.group(3))
    # the printed direct-path effect of the top head, computed by hand from hooks
    model, tok = demo
    base, source, io, s = ioi.ioi_prompts(tok, 6)
    rows = torch.arange(6)
    by_hand = _direct_path_by_hand(model, base, source, layer, head, lambda lg: lg[rows, io] - lg[rows, s])
    assert abs(by_hand - printed) < 2e-3, (by_hand, printed)
    assert printed < 0  # patching in the ABC run removes the answer
    assert "strongest senders into the name movers' queries: L" in text
    assert re.search(r"rewired users: split_\d+", text)  # the edges into the receivers' queries
    pytest.importorskip("matplotlib")
    assert out.stat().st_size > 10_000


def test_iti_example(demo, capsys):
    import iti_steering as iti

    model, tok = demo
    acc, xent, x, y, n_train, n_test = iti.probe_heads(model, tok, steps=150)
    assert acc.shape == (12, 4) and n_test > 0
    assert acc.mean() > 0.75 and acc.max() == 1.0  # the demo model represents the mood, on unseen words too
    chosen = iti.top_heads(acc, xent, 4)
    shift = iti.shift_vectors(x, y, chosen, 4)
    # each chosen head's shift has the std of the head's outputs along its (unit) direction
    d = x.shape[-1]
    for l, h in chosen:
        v = shift[l][h * d : (h + 1) * d]
        torch.testing.assert_close((x[:, l, h] @ (v / v.norm())).std(), v.norm())
    layers = sorted(shift)
    steer = iti.steering_model(model, layers)
    inputs = tok("Today I feel", return_tensors="pt")
    alpha = 5.0
    _, ours = steer.generate(
        inputs,
        source_representations=[alpha * shift[l] for l in layers],
        intervene_on="all",
        unit_locations=None,
        max_new_tokens=6,
        do_sample=False,
    )
    # reference: HF's own generate (KV cache) with a forward pre-hook adding the shift to c_proj's input
    # at every forward, the prompt and each new token
    hooks = [
        model.transformer.h[l].attn.c_proj.register_forward_pre_hook(
            lambda m, a, v=alpha * shift[l]: (a[0] + v,) + tuple(a[1:])
        )
        for l in layers
    ]
    try:
        ref = model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=tok.eos_token_id)
    finally:
        for hk in hooks:
            hk.remove()
    assert ours.tolist() == ref.tolist()
    happy = tok.decode(ours[0, inputs["input_ids"].shape[1] :])
    assert any(w in happy for w in HAPPY_WORDS), happy

    iti.main(["--quick", "--tokens", "5", "--top-k", "6"])
    text = capsys.readouterr().out
    assert "probe accuracy on" in text and "top-6 heads" in text
    lines = {k: re.search(rf"{re.escape(k)}\s+(.*)", text).group(1) for k in ("ITI +5 (happy):", "ITI -5 (sad):")}
    assert any(w in lines["ITI +5 (happy):"].split(" ", 3)[-1] for w in HAPPY_WORDS), lines
    assert any(w in lines["ITI -5 (sad):"].split(" ", 3)[-1] for w in SAD_WORDS), lines
