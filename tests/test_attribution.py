"""Attribution patching (fxvene/methods/attribution.py) against independent references: central finite
differences of a hand-written interpolation (forward hooks on the HF modules, float64; on Llama, whose
RMSNorm rounds to float32, autograd of the same hooked interpolation), and the exact
patching sweep (small perturbations: estimate close to exact; exact_top_k: equal to the sweep)."""

import pytest
import torch
from _hooks import module_hook, read
from conftest import make_gpt2, make_llama

import fxvene as pv

SEQ = 6


def _inputs(seed, vocab=50, b=2):
    g = torch.Generator().manual_seed(seed)
    return (
        {"input_ids": torch.randint(1, vocab, (b, SEQ), generator=g)},
        {"input_ids": torch.randint(1, vocab, (b, SEQ), generator=g)},
    )


def _blocks(model):
    return model.transformer.h if hasattr(model, "transformer") else model.model.layers


def _o_proj(model, layer):
    blk = _blocks(model)[layer]
    return blk.attn.c_proj if hasattr(blk, "attn") else blk.self_attn.o_proj


def _site(model, component, layer):
    """(module, port) of the site: the block's output, or the input of the attention's output projection."""
    if component == "block_output":
        return _blocks(model)[layer], "output"
    return _o_proj(model, layer), "input"


def _record(model, ids, component, layer):
    """The site's value in a plain run of the HF model, read by a hook."""
    module, port = _site(model, component, layer)
    return read(model, module, ids, port)


def _metric_with(model, ids, component, layer, pos, head, src, eps, a, b, grad=False):
    """logit a - logit b at the last position with x -> x + eps (src - x) at one unit (hooks)."""
    n_heads = model.config.num_attention_heads

    def edit(x):
        x = x.clone()
        if head is None:
            x[:, pos] = x[:, pos] + eps * (src[:, pos] - x[:, pos])
        else:
            d = x.shape[-1] // n_heads
            cols = slice(head * d, (head + 1) * d)
            x[:, pos, cols] = x[:, pos, cols] + eps * (src[:, pos, cols] - x[:, pos, cols])
        return x

    with module_hook(*_site(model, component, layer), edit), torch.set_grad_enabled(grad):
        lg = model(**ids).logits[:, -1]
    return lg[:, a] - lg[:, b]


@pytest.mark.parametrize(
    "family,component",
    [("gpt2", "block_output"), ("gpt2", "head_attention_value_output"), ("llama", "head_attention_value_output")],
)
def test_estimates_equal_finite_differences(family, component):
    model = (make_gpt2(n_layer=2, n_embd=16) if family == "gpt2" else make_llama(n_layer=2)).double()
    base, source = _inputs(5)
    a, b = 3, 7
    res = pv.attribution_patching(model, base, source, component, metric="logit_diff", tokens=[a, b])
    assert res.values.dtype == torch.float64
    heads = res.heads if res.heads is not None else [None]
    eps = 1e-5
    checked = 0
    for li, layer in enumerate(res.layers):
        src = _record(model, source, component, layer)
        for pi, pos in enumerate(res.positions):
            for hi, head in enumerate(heads):
                if head is not None and (pos + hi) % 2:  # half the head cells: enough, and fast
                    continue
                if family == "gpt2":
                    up = _metric_with(model, base, component, layer, pos, head, src, eps, a, b)
                    down = _metric_with(model, base, component, layer, pos, head, src, -eps, a, b)
                    fd = (up - down) / (2 * eps)
                else:
                    # Llama's RMSNorm computes in float32 even in a float64 model, which spoils difference
                    # quotients: differentiate the same hooked interpolation with autograd instead
                    e = torch.zeros((), dtype=torch.float64, requires_grad=True)
                    with torch.enable_grad():
                        m = _metric_with(model, base, component, layer, pos, head, src, e, a, b, grad=True)
                        fd = torch.stack([torch.autograd.grad(m[i], e, retain_graph=True)[0] for i in range(len(m))])
                est = res.effects[0, li, pi, hi, :, 0] if head is not None else res.effects[0, li, pi, :, 0]
                torch.testing.assert_close(est, fd, atol=1e-7, rtol=1e-5)
                checked += 1
    assert checked >= 12
    # the base value is the unpatched metric
    with torch.no_grad():
        lg = model(**base).logits[:, -1]
    torch.testing.assert_close(res.base[:, 0], lg[:, a] - lg[:, b])


@pytest.fixture(scope="module")
def near_model():
    """A tiny float64 GPT-2 where tokens 9 and 10 embed as token 4 plus a nudge (10 x smaller for 10):
    swapping 4 -> 9 or 4 -> 10 in the source is a small perturbation of the base."""
    model = make_gpt2(n_layer=3, n_embd=24, seed=2).double()
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        wte = model.transformer.wte.weight
        nudge = torch.randn(wte.shape[1], generator=g, dtype=torch.float64)
        wte[9] = wte[4] + 2e-3 * nudge
        wte[10] = wte[4] + 2e-4 * nudge
    return model


def test_small_perturbation_estimates_close_to_the_exact_sweep(near_model):
    """First order: the estimate's error shrinks like the square of the perturbation, the effect like
    the perturbation itself."""
    base = {"input_ids": torch.tensor([[5, 4, 12, 4, 30, 4]])}
    comps = ["block_output", "mlp_output"]
    rel = []
    for tok in (9, 10):
        source = {"input_ids": torch.tensor([[5, tok, 12, tok, 30, tok]])}
        res = pv.attribution_patching(near_model, base, source, comps, metric="logit_diff", tokens=[11, 23])
        sw = pv.patching_sweep(near_model, base, source, comps, tokens=[11, 23])
        exact = (sw.values[..., 0] - sw.values[..., 1]) - (sw.base[:, 0] - sw.base[:, 1])
        est = res.effects[..., 0]
        assert exact.abs().max() > 1e-5  # the perturbation does something
        # position 0 is the same in both runs (causal attention): no effect, estimated or exact
        assert est[:, :, 0].abs().max() < 1e-12 and exact[:, :, 0].abs().max() < 1e-10
        rel.append(float((est - exact).abs().max() / exact.abs().max()))
    assert rel[1] < 0.06 and rel[1] < 0.2 * rel[0], rel


@pytest.mark.parametrize(
    "component,metric,tokens",
    [
        ("block_output", "logit_diff", [3, 7]),
        ("head_attention_value_output", "prob", [3, 7]),
        ("attention_output", "logprob", [11]),
    ],
)
def test_exact_top_k_equals_patching_sweep(near_model, component, metric, tokens):
    model = near_model  # (one model: its KV-cache graph is exported once)
    base, source = _inputs(9)
    res = pv.attribution_patching(model, base, source, component, metric=metric, tokens=tokens, exact_top_k=6)
    sweep_metric = "prob" if metric in ("prob", "logprob") else "logits"
    sw = pv.patching_sweep(model, base, source, component, tokens=tokens, metric=sweep_metric)
    if metric == "logit_diff":
        ref = (sw.values[..., 0] - sw.values[..., 1]).unsqueeze(-1)
    elif metric == "logprob":
        ref = sw.values.log()
    else:
        ref = sw.values
    done = ~torch.isnan(res.exact)
    assert int(done.sum()) == 6 == res.forwards["exact_rows"]
    torch.testing.assert_close(res.exact[done], ref[done].to(res.exact.dtype), atol=1e-5, rtol=1e-4)
    # the re-run cells are the ones with the largest |estimate|
    thresh = res.effects[done].abs().min()
    assert (res.effects[~done].abs() <= thresh + 1e-12).all()
    recs = res.exact_cells()
    assert len(recs) == 6 and all("exact" in r for r in recs)


def test_callable_metric_equals_the_named_one():
    model = make_gpt2(n_layer=2, n_embd=16)
    base, source = _inputs(2)
    named = pv.attribution_patching(model, base, source, "block_output", metric="logit_diff", tokens=[3, 7])
    fn = pv.attribution_patching(model, base, source, "block_output", metric=lambda lg: lg[:, 3] - lg[:, 7])
    torch.testing.assert_close(named.values, fn.values)
    assert "estimate" in named.top(1)[0]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(metric="kl"), "metric must be one of"),
        (dict(metric="logit_diff", tokens=[3]), "two token ids"),
        (dict(metric="prob"), "needs token ids"),
        (dict(metric="prob", tokens=[500]), "not a token id"),
        (dict(tokens=[1, 2], exact_top_k=0), "exact_top_k"),
        (dict(tokens=[1, 2], components="attention_weight"), "no position units"),
        (dict(tokens=[1, 2], components="head_attention_value_output", heads=[9]), "heads"),
        (dict(tokens=[1, 2], layers=[5]), "layers"),
    ],
)
def test_bad_input(kwargs, match):
    model = make_gpt2(n_layer=2, n_embd=16)
    base, source = _inputs(2)
    with pytest.raises(ValueError, match=match):
        pv.attribution_patching(model, base, source, **kwargs)
    with pytest.raises(ValueError, match="same length"):
        pv.attribution_patching(model, base, {"input_ids": source["input_ids"][:, :3]}, tokens=[1, 2])
