"""Where pyvene 0.1.8 is wrong or stricter and fxvene is right or more lenient (issue 28, items 12-21;
docs/differences.md lists them). Each test pins fxvene's answer against a hand-written hook or a hand
computation, never against fxvene itself; where pyvene raises, it also asserts the error pyvene raises,
and where pyvene gives another answer, which hand computation pyvene's answer is. So each test documents
both sides of the difference.

One tiny 2-layer GPT-2 (built from a config) serves every test: ``fx`` is wrapped by fxvene (traced once),
``ref`` carries the hand-written hooks, and pyvene gets a fresh copy each time (it removes a model's hooks).
"""

import contextlib

import pytest
import torch
from conftest import make_gpt2

import fxvene as fv

pv = pytest.importorskip("pyvene")

D, H = 24, 4  # GPT-2's width and head count here
HD = D // H


def _gpt2():
    return make_gpt2(n_layer=2)


@pytest.fixture(scope="module")
def fx():
    return _gpt2()


@pytest.fixture(scope="module")
def ref():
    return _gpt2()


def _ids(seed, b=1, n=6):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1, 50, (b, n), generator=g)}


BASE, SRC, SRC2 = _ids(1), _ids(2), _ids(3)


def _hs(o):
    return o[0] if isinstance(o, tuple) else o


@contextlib.contextmanager
def _edit(module, fn):
    """A forward hook that replaces ``module``'s output (its hidden states) by ``fn(clone of it)``."""

    def hook(_m, _i, o):
        x = fn(_hs(o).clone())
        return (x, *o[1:]) if isinstance(o, tuple) else x

    h = module.register_forward_hook(hook)
    try:
        yield
    finally:
        h.remove()


def _read(model, module, inputs):
    """``module``'s output (hidden states) on ``inputs``."""
    seen = {}

    def hook(_m, _i, o):
        seen.setdefault("x", _hs(o).detach().clone())  # returns None: the output stays as it is

    h = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        h.remove()
    return seen["x"]


def _block(model, layer):
    return model.transformer.h[layer]


def _rows(edits):
    """``fn`` for :func:`_edit` that applies ``{(batch, pos): row_fn}``, each ``row_fn(current row)``."""

    def fn(x):
        for (b, p), row in edits.items():
            x[b, p] = row(x[b, p])
        return x

    return fn


def _logits(model, inputs=BASE):
    with torch.no_grad():
        return model(**inputs).logits


def _close(a, b):
    return torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def _cfg(lib, reps, mode="parallel"):
    return lib.IntervenableConfig([dict(r) for r in reps], mode=mode)


def _only(im):
    iv = im.interventions[list(im.interventions)[0]]
    return iv[0] if isinstance(iv, tuple) else iv  # pyvene's values are (intervention, hook)


# ------------------------------------------------------------------ 12: unit_locations=None on a split component

# (component, unit, columns of c_attn's output (q | k | v) the component is, the columns pyvene swaps)
SPLIT = [
    ("key_output", "pos", slice(D, 2 * D), slice(0, D)),
    ("value_output", "pos", slice(2 * D, 3 * D), slice(0, D)),
    ("head_value_output", "h", slice(2 * D, 3 * D), slice(0, HD)),
    ("head_key_output", "h", slice(D, 2 * D), slice(0, HD)),
]


@pytest.mark.parametrize("comp,unit,cols,pyvene_cols", SPLIT, ids=[s[0] for s in SPLIT])
def test_none_locations_swap_the_component_slice(fx, ref, comp, unit, cols, pyvene_cols):
    """A Vanilla swap with ``unit_locations=None`` on a component split out of c_attn's output swaps that
    component (every position, every head); pyvene swaps the first ``dim`` columns of the whole output (the
    query third, or query head 0 for ``head_*``)."""
    base, src = _ids(1, b=2), _ids(2, b=2)
    attn = _block(ref, 0).attn.c_attn
    s = _read(ref, attn, src)

    def swap(c):
        def fn(x):
            x[..., c] = s[..., c]
            return x

        return fn

    with _edit(attn, swap(cols)):
        want = _logits(ref, base)
    with _edit(attn, swap(pyvene_cols)):
        pyvene_want = _logits(ref, base)
    reps = lambda lib: [dict(layer=0, component=comp, unit=unit, intervention_type=lib.VanillaIntervention)]  # noqa: E731
    _, out = fv.IntervenableModel(_cfg(fv, reps(fv)), fx)(base, [src], unit_locations=None)
    _, pout = pv.IntervenableModel(_cfg(pv, reps(pv)), _gpt2())(base, [src], unit_locations=None)
    assert _close(out.logits, want) and not _close(want, pyvene_want)
    assert _close(pout.logits, pyvene_want)


# ------------------------------------------------------------------ 13: intervention_link_key


def _linked(lib, a, b):
    return [
        dict(layer=a[0], component="block_output", intervention_type=lib.AdditionIntervention, intervention_link_key=0),
        dict(layer=b[0], component="block_output", intervention_type=lib.AdditionIntervention, intervention_link_key=0),
    ]


def _edits_at(ref, per_site):
    """Hooks for ``{(layer, pos): row_fn}`` on ``ref``'s blocks; returns the logits on BASE."""
    with contextlib.ExitStack() as st:
        for layer in sorted({site[0] for site in per_site}):
            edits = {(0, p): fn for (lay, p), fn in per_site.items() if lay == layer}
            st.enter_context(_edit(_block(ref, layer), _rows(edits)))
        return _logits(ref)


def test_linked_share_one_module(fx):
    """Linked representations share one intervention module (one set of parameters)."""
    im = fv.IntervenableModel(_cfg(fv, _linked(fv, (0, 2), (1, 4))), fx)
    a, b = (im.interventions[k] for k in im.sorted_keys)
    assert a is b


def test_linked_same_site_and_positions_agree_with_pyvene(fx, ref):
    """Parallel mode, both linked interventions at one site and position: the second sees the first's
    output there in both libraries (b + s1 + s2)."""
    s1, s2 = _read(ref, _block(ref, 1), SRC)[0, 2], _read(ref, _block(ref, 1), SRC2)[0, 2]

    def both(r):
        return r + s1 + s2

    want = _edits_at(ref, {(1, 2): both})
    ul = {"sources->base": ([[[2]], [[2]]], [[[2]], [[2]]])}
    _, out = fv.IntervenableModel(_cfg(fv, _linked(fv, (1, 2), (1, 2))), fx)(BASE, [SRC, SRC2], unit_locations=ul)
    _, pout = pv.IntervenableModel(_cfg(pv, _linked(pv, (1, 2), (1, 2))), _gpt2())(BASE, [SRC, SRC2], unit_locations=ul)
    assert _close(out.logits, want) and _close(pout.logits, want)


@pytest.mark.parametrize("a,b", [((1, 2), (1, 4)), ((0, 2), (1, 4))], ids=["other_position", "other_layer"])
def test_linked_parallel_each_reads_its_own_base(fx, ref, a, b):
    """Parallel mode: each linked intervention reads the base at its own site and positions; pyvene feeds
    the second the first's output (at another position or layer) as its base."""
    s1, s2 = _read(ref, _block(ref, a[0]), SRC)[0, a[1]], _read(ref, _block(ref, b[0]), SRC2)[0, b[1]]
    a_out = _read(ref, _block(ref, a[0]), BASE)[0, a[1]] + s1
    want = _edits_at(ref, {a: lambda r: r + s1, b: lambda r: r + s2})
    pyvene_want = _edits_at(ref, {a: lambda r: r + s1, b: lambda r: a_out + s2})
    ul = {"sources->base": ([[[a[1]]], [[b[1]]]], [[[a[1]]], [[b[1]]]])}
    _, out = fv.IntervenableModel(_cfg(fv, _linked(fv, a, b)), fx)(BASE, [SRC, SRC2], unit_locations=ul)
    _, pout = pv.IntervenableModel(_cfg(pv, _linked(pv, a, b)), _gpt2())(BASE, [SRC, SRC2], unit_locations=ul)
    assert _close(out.logits, want) and not _close(want, pyvene_want)
    assert _close(pout.logits, pyvene_want)


@pytest.mark.parametrize("a,b", [((1, 2), (1, 2)), ((0, 2), (1, 4))], ids=["same_site", "other_layer"])
def test_linked_serial_source_and_base_are_the_sites_own(fx, ref, a, b):
    """Serial mode: the first linked intervention acts on source 1's run; the second reads source 1 (so
    patched) at its own site and adds that to the base at its own site. pyvene's second intervention reads
    the first's output left over from the source run as its source *and* its base, even at one site."""
    s1 = _read(ref, _block(ref, a[0]), SRC)[0, a[1]]
    a_out = _read(ref, _block(ref, a[0]), SRC2)[0, a[1]] + s1  # the first intervention on source 1's run
    with _edit(_block(ref, a[0]), _rows({(0, a[1]): lambda r: a_out})):
        src_b = _read(ref, _block(ref, b[0]), SRC2)[0, b[1]]
    want = _edits_at(ref, {b: lambda r: r + src_b})
    pyvene_want = _edits_at(ref, {b: lambda r: a_out + a_out})
    ul = {"source_0->source_1": ([[[a[1]]]], [[[a[1]]]]), "source_1->base": ([[[b[1]]]], [[[b[1]]]])}
    _, out = fv.IntervenableModel(_cfg(fv, _linked(fv, a, b), "serial"), fx)(BASE, [SRC, SRC2], unit_locations=ul)
    _, pout = pv.IntervenableModel(_cfg(pv, _linked(pv, a, b), "serial"), _gpt2())(BASE, [SRC, SRC2], unit_locations=ul)
    assert _close(out.logits, want) and not _close(want, pyvene_want)
    assert _close(pout.logits, pyvene_want)


# ------------------------------------------------------------------ 14: serial mode, two interventions in a group


def test_serial_group_of_two(fx, ref):
    """Serial mode with two interventions in one group swaps both from the group's source; pyvene 0.1.8
    always raises there (its getter runs twice per key)."""
    s0, s1 = _read(ref, _block(ref, 0), SRC)[0, 1], _read(ref, _block(ref, 1), SRC)[0, 2]
    want = _edits_at(ref, {(0, 1): lambda r: s0, (1, 2): lambda r: s1})
    reps = lambda lib: [  # noqa: E731
        dict(layer=0, component="block_output", group_key=0, intervention_type=lib.VanillaIntervention),
        dict(layer=1, component="block_output", group_key=0, intervention_type=lib.VanillaIntervention),
    ]
    ul = {"source_0->base": ([[[1]], [[2]]], [[[1]], [[2]]])}
    _, out = fv.IntervenableModel(_cfg(fv, reps(fv), "serial"), fx)(BASE, [SRC], unit_locations=ul)
    assert _close(out.logits, want)
    with pytest.raises(Exception, match="each getter and setter should be called only once"):
        pv.IntervenableModel(_cfg(pv, reps(pv), "serial"), _gpt2())(BASE, [SRC], unit_locations=ul)


# ------------------------------------------------------------------ 15: a Collect whose group gets a source run


def test_collect_in_a_group_with_a_source(fx, ref):
    """Parallel mode: a Collect in a group that gets a source run collects from the base (the source run is
    not needed for it) and the other group's patch applies; pyvene crashes."""
    want_collect = _read(ref, _block(ref, 0), BASE)[:, 1:2]
    s = _read(ref, _block(ref, 1), SRC2)[0, 2]
    want = _edits_at(ref, {(1, 2): lambda r: s})
    reps = lambda lib: [  # noqa: E731
        dict(layer=0, component="block_output", group_key=0, intervention_type=lib.CollectIntervention),
        dict(layer=1, component="block_output", group_key=1, intervention_type=lib.VanillaIntervention),
    ]
    ul = {"sources->base": ([[[1]], [[2]]], [[[1]], [[2]]])}
    (_, collected), out = fv.IntervenableModel(_cfg(fv, reps(fv)), fx)(BASE, [SRC, SRC2], unit_locations=ul)
    assert len(collected) == 1 and _close(collected[0], want_collect)
    assert _close(out.logits, want)
    with pytest.raises(AttributeError, match="'Tensor' object has no attribute 'append'"):
        pv.IntervenableModel(_cfg(pv, reps(pv)), _gpt2())(BASE, [SRC, SRC2], unit_locations=ul)


# ------------------------------------------------------------------ 16: grouped source_representations


@pytest.mark.parametrize("as_dict", [False, True], ids=["list", "dict"])
def test_grouped_source_representations(fx, ref, as_dict):
    """source_representations give one value per intervention, whatever the groups; pyvene counts them
    against the groups and raises."""
    v0, v1 = torch.full((D,), 0.5), torch.linspace(-1, 1, D)
    want = _edits_at(ref, {(0, 1): lambda r: v0, (1, 2): lambda r: v1})
    reps = lambda lib: [  # noqa: E731
        dict(layer=0, component="block_output", group_key=0, intervention_type=lib.VanillaIntervention),
        dict(layer=1, component="block_output", group_key=0, intervention_type=lib.VanillaIntervention),
    ]
    ul = {"sources->base": (None, [[[1]], [[2]]])}
    im = fv.IntervenableModel(_cfg(fv, reps(fv)), fx)
    vals = [v0.view(1, 1, D), v1.view(1, 1, D)]
    srcreps = dict(zip(im.sorted_keys, vals)) if as_dict else vals
    _, out = im(BASE, source_representations=srcreps, unit_locations=ul)
    assert _close(out.logits, want)
    pim = pv.IntervenableModel(_cfg(pv, reps(pv)), _gpt2())
    psrcreps = dict(zip(pim.sorted_keys, vals)) if as_dict else vals
    with pytest.raises(ValueError, match="Source activations length 2 is not equal to intervention length 1"):
        pim(BASE, source_representations=psrcreps, unit_locations=ul)


def test_one_source_representation_with_a_collect(fx, ref):
    """One tensor as ``source_representations`` feeds every intervention that takes a source; a Collect in
    the same config reads the clean base. An explicit tensor for the Collect is a ValueError; pyvene crashes
    on both calls."""
    v = torch.linspace(-1, 1, D)
    want_collect = _read(ref, _block(ref, 0), BASE)[:, 1:2]
    want = _edits_at(ref, {(1, 2): lambda r: r + v})
    reps = lambda lib: [  # noqa: E731
        dict(layer=0, component="block_output", intervention_type=lib.CollectIntervention),
        dict(layer=1, component="block_output", intervention_type=lib.AdditionIntervention),
    ]
    ul = {"sources->base": (None, [[[1]], [[2]]])}
    im = fv.IntervenableModel(_cfg(fv, reps(fv)), fx)
    (_, collected), out = im(BASE, source_representations=v.view(1, 1, D), unit_locations=ul)
    assert len(collected) == 1 and _close(collected[0], want_collect)
    assert _close(out.logits, want)
    with pytest.raises(ValueError, match="CollectIntervention reads the base and takes no source"):
        im(BASE, source_representations=[v.view(1, 1, D), v.view(1, 1, D)], unit_locations=ul)
    with pytest.raises(AttributeError, match="'Tensor' object has no attribute 'append'"):
        pv.IntervenableModel(_cfg(pv, reps(pv)), _gpt2())(
            BASE, source_representations=v.view(1, 1, D), unit_locations=ul
        )


# ------------------------------------------------------------------ 17, 18: generate

GEN = dict(do_sample=False, eos_token_id=None, pad_token_id=0)


def test_generate_decode_collect_without_decode_step(fx, ref):
    """``max_new_tokens=1`` runs no decode step: a decode-step Collect returns an empty list; pyvene
    raises KeyError."""
    want = ref.generate(**BASE, max_new_tokens=1, **GEN)
    reps = lambda lib: [dict(layer=1, component="block_output", intervention_type=lib.CollectIntervention)]  # noqa: E731
    ul = {"sources->base": (None, [[[0]]])}
    (_, collected), seq = fv.IntervenableModel(_cfg(fv, reps(fv)), fx).generate(
        BASE, unit_locations=ul, intervene_on_prompt=False, max_new_tokens=1, **GEN
    )
    assert collected == [] and torch.equal(seq, want)
    with pytest.raises(KeyError):
        pv.IntervenableModel(_cfg(pv, reps(pv)), _gpt2()).generate(
            BASE, unit_locations=ul, intervene_on_prompt=False, max_new_tokens=1, **GEN
        )


def test_generate_serial_source_run_is_not_the_prompt(fx, ref):
    """Serial mode, ``intervene_on_prompt=False``: group 0 patches source 1's run (a source run is not the
    prompt), and group 1 writes that patched source at every decode step. pyvene skips group 0's patch
    (its counters take the source run for the prompt forward): its scores are those of the unpatched source."""
    v0 = _read(ref, _block(ref, 0), SRC)[0, 2]
    with _edit(_block(ref, 0), _rows({(0, 2): lambda r: v0})):
        patched = _read(ref, _block(ref, 1), SRC2)[0, 5]
    plain = _read(ref, _block(ref, 1), SRC2)[0, 5]
    kw = dict(max_new_tokens=3, return_dict_in_generate=True, output_scores=True, **GEN)

    def decode_steps_get(v):
        def fn(x):
            if x.shape[1] == 1:  # a decode step
                x[:, 0] = v
            return x

        with _edit(_block(ref, 1), fn):
            return ref.generate(**BASE, **kw).scores

    want, pyvene_want = decode_steps_get(patched), decode_steps_get(plain)
    reps = lambda lib: [  # noqa: E731
        dict(layer=0, component="block_output", group_key=0, intervention_type=lib.VanillaIntervention),
        dict(layer=1, component="block_output", group_key=1, intervention_type=lib.VanillaIntervention),
    ]
    ul = {"source_0->source_1": ([[[2]]], [[[2]]]), "source_1->base": ([[[5]]], [[[0]]])}
    _, out = fv.IntervenableModel(_cfg(fv, reps(fv), "serial"), fx).generate(
        BASE, [SRC, SRC2], unit_locations=ul, intervene_on_prompt=False, **kw
    )
    _, pout = pv.IntervenableModel(_cfg(pv, reps(pv), "serial"), _gpt2()).generate(
        BASE, [SRC, SRC2], unit_locations=ul, intervene_on_prompt=False, **kw
    )
    assert not all(_close(a, b) for a, b in zip(want, pyvene_want))
    assert len(out.scores) == 3 and all(_close(a, b) for a, b in zip(out.scores, want))
    assert all(_close(a, b) for a, b in zip(pout.scores, pyvene_want))


# ------------------------------------------------------------------ 19: saving a Collect


@pytest.mark.parametrize("kind", ["CollectIntervention", "NoiseIntervention"])
def test_saved_weightless_intervention_loads(fx, ref, tmp_path, kind):
    """A saved Collect or Noise (no weights file) loads (a Collect then collects); pyvene looks for a ``.bin``
    it never wrote."""
    reps = lambda lib: [dict(layer=1, component="block_output", intervention_type=getattr(lib, kind))]  # noqa: E731
    fv.IntervenableModel(_cfg(fv, reps(fv)), fx).save(str(tmp_path / "fx"))
    im = fv.IntervenableModel.load(str(tmp_path / "fx"), fx)
    assert type(_only(im)).__name__ == kind
    if kind == "CollectIntervention":
        _, collected = im(BASE, unit_locations={"base": 3})
        assert _close(collected[0], _read(ref, _block(ref, 1), BASE)[:, 3:4])
    pmodel = _gpt2()
    pv.IntervenableModel(_cfg(pv, reps(pv)), pmodel).save(str(tmp_path / "pv"))
    with pytest.raises(FileNotFoundError, match=r"\.bin"):
        pv.IntervenableModel.load(str(tmp_path / "pv"), pmodel)


# ------------------------------------------------------------------ 20: SigmoidMask on a half-precision model


def test_sigmoid_mask_on_bf16():
    """SigmoidMask (float32 parameters) on a bf16 model: the gate is computed in float32 and the result
    written back in bf16; pyvene's scatter raises a dtype mismatch."""
    model, hook_model = _gpt2().to(torch.bfloat16), _gpt2().to(torch.bfloat16)
    base, src = _ids(1, b=2), _ids(2, b=2)
    mask = torch.linspace(-0.02, 0.02, D)
    gate = torch.sigmoid(mask / 0.01)
    s = _read(hook_model, _block(hook_model, 1), src)

    def mix(b, p):
        return lambda r: ((1 - gate) * r.float() + gate * s[b, p].float()).to(torch.bfloat16)

    with _edit(_block(hook_model, 1), _rows({(0, 2): mix(0, 2), (1, 3): mix(1, 3)})):
        want = _logits(hook_model, base)
    ul = {"sources->base": ([[[2], [3]]], [[[2], [3]]])}
    reps = lambda lib: [dict(layer=1, component="block_output", intervention_type=lib.SigmoidMaskIntervention)]  # noqa: E731
    im = fv.IntervenableModel(_cfg(fv, reps(fv)), model)
    with torch.no_grad():
        im.interventions[im.sorted_keys[0]].mask.copy_(mask)
    _, out = im(base, [src], unit_locations=ul)
    assert out.logits.dtype == torch.bfloat16 and torch.equal(out.logits, want)
    pim = pv.IntervenableModel(_cfg(pv, reps(pv)), _gpt2().to(torch.bfloat16))
    with pytest.raises(RuntimeError, match="Index put requires the source and destination dtypes match"):
        pim(base, [src], unit_locations=ul)


# ------------------------------------------------------------------ 21: a trainable type on a module-path component

MLP_PATH = "transformer.h[1].mlp.output"


def _low_rank_want(ref, weight, base, src):
    """``b + (sR - bR) R^T`` at positions 2 and 3 of the layer-1 MLP output (LowRankRotatedSpace by hand)."""
    mlp = _block(ref, 1).mlp
    s = _read(ref, mlp, src)
    R = weight.detach()

    def fn(x):
        for b, p in ((0, 2), (1, 3)):
            x[b, p] = x[b, p] + (s[b, p] @ R - x[b, p] @ R) @ R.T
        return x

    with _edit(mlp, fn):
        return _logits(ref, base)


@pytest.mark.parametrize("given", ["type", "instance"])
def test_trainable_type_on_module_path(fx, ref, given):
    """A trainable intervention given by type on a module-path component gets the module's width
    (``embed_dim``); pyvene passes ``embed_dim=None`` and raises TypeError. Given as an instance, both agree."""
    base, src = _ids(1, b=2), _ids(2, b=2)
    ul = {"sources->base": ([[[2], [3]]], [[[2], [3]]])}

    def rep(lib):
        if given == "type":
            return dict(component=MLP_PATH, low_rank_dimension=2, intervention_type=lib.LowRankRotatedSpaceIntervention)
        return dict(
            component=MLP_PATH, intervention=lib.LowRankRotatedSpaceIntervention(embed_dim=D, low_rank_dimension=2)
        )

    im = fv.IntervenableModel(_cfg(fv, [rep(fv)]), fx)
    _, out = im(base, [src], unit_locations=ul)
    assert _close(out.logits, _low_rank_want(ref, _only(im).rotate_layer.weight, base, src))
    if given == "type":
        with pytest.raises(TypeError, match="empty"):
            pv.IntervenableModel(_cfg(pv, [rep(pv)]), _gpt2())
    else:
        pim = pv.IntervenableModel(_cfg(pv, [rep(pv)]), _gpt2())
        _, pout = pim(base, [src], unit_locations=ul)
        assert _close(pout.logits, _low_rank_want(ref, _only(pim).rotate_layer.weight, base, src))
