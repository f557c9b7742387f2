"""Vision-language families (issue 24): LLaVA (``models/llava.py``), checked against HF forward hooks.

Unprefixed components are the language stack (pyvene 0.1.8's LLaVA names), ``vision_*`` the CLIP vision
tower's layers; the positions of the language stack are the text with the image tokens spliced in, and
``pv.image_token_positions`` gives them per row. Traced with torch.export on transformers 5; on 4.47.1
LLaVA's forward decides its image merge from the token ids' values (``.item()`` and a data-dependent
``if``), which torch.export cannot trace, so the graph tests skip there.
"""

import pytest
import torch
import transformers
from _hooks import capture, head_view, hooks
from _matrix import cell
from _tiny import IMAGE_TOKEN, make_llava

import fxvene as pv

V5 = int(transformers.__version__.split(".")[0]) >= 5
needs_export = pytest.mark.skipif(not V5, reason="LLaVA 4.47.1: data-dependent image merge, not exportable")
N_IMG = 16  # image tokens per image: (8 / 2) ** 2 patches


@pytest.fixture(scope="module")
def llava():
    return make_llava()


def _inputs(seed, batch=2, tail=(7, 8, 9)):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(3, IMAGE_TOKEN, (batch, 2 + len(tail)), generator=g)
    ids = torch.cat([text[:, :2], torch.full((batch, N_IMG), IMAGE_TOKEN), text[:, 2:]], 1)
    return {"input_ids": ids, "pixel_values": torch.randn(batch, 3, 8, 8, generator=g)}


def _table(model, layer):
    """component -> (HF module path, port, heads or None), written from HF's LLaVA modules on each line."""
    if V5:
        lm, vt = f"model.language_model.layers.{layer}", f"model.vision_tower.encoder.layers.{layer}"
    else:
        lm, vt = f"language_model.model.layers.{layer}", f"vision_tower.vision_model.encoder.layers.{layer}"
    tc, vc = model.config.text_config, model.config.vision_config
    h, kv, vh = tc.num_attention_heads, tc.num_key_value_heads, vc.num_attention_heads
    a, va = f"{lm}.self_attn", f"{vt}.self_attn"
    return {
        "block_input": (lm, "input", None),
        "block_output": (lm, "output", None),
        "mlp_input": (f"{lm}.mlp", "input", None),
        "mlp_activation": (f"{lm}.mlp.act_fn", "output", None),
        "mlp_output": (f"{lm}.mlp", "output", None),
        "attention_input": (a, "input", None),
        "attention_output": (a, "output", None),
        "attention_value_output": (f"{a}.o_proj", "input", None),
        "head_attention_value_output": (f"{a}.o_proj", "input", h),
        "query_output": (f"{a}.q_proj", "output", None),
        "key_output": (f"{a}.k_proj", "output", None),
        "value_output": (f"{a}.v_proj", "output", None),
        "head_query_output": (f"{a}.q_proj", "output", h),
        "head_key_output": (f"{a}.k_proj", "output", kv),
        "head_value_output": (f"{a}.v_proj", "output", kv),
        "vision_block_input": (vt, "input", None),
        "vision_block_output": (vt, "output", None),
        "vision_mlp_input": (f"{vt}.mlp", "input", None),
        "vision_mlp_activation": (f"{vt}.mlp.activation_fn", "output", None),
        "vision_mlp_output": (f"{vt}.mlp", "output", None),
        "vision_attention_input": (va, "input", None),
        "vision_attention_output": (va, "output", None),
        "vision_attention_value_output": (f"{va}.out_proj", "input", None),
        "vision_head_attention_value_output": (f"{va}.out_proj", "input", vh),
        "vision_query_output": (f"{va}.q_proj", "output", None),
        "vision_key_output": (f"{va}.k_proj", "output", None),
        "vision_value_output": (f"{va}.v_proj", "output", None),
        "vision_head_query_output": (f"{va}.q_proj", "output", vh),
        "vision_head_key_output": (f"{va}.k_proj", "output", vh),
        "vision_head_value_output": (f"{va}.v_proj", "output", vh),
    }


def test_llava_spec_covers_the_family(llava):
    """Every component of the family spec (but ``attention_weight``, read off the eager attention's
    probabilities, which no module returns) is in the hook table, and vice versa."""
    from fxvene.models import family_for

    fam, _ = family_for(llava)
    assert fam.name == "llava"
    assert set(fam.components) - {"attention_weight"} == set(_table(llava, 0))


@needs_export
@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("x", [pytest.param(0, marks=cell("llava", "components"))])
def test_llava_collect_every_component_equals_hooks(llava, layer, x):
    """One forward on two image+text rows collects every component at a layer; each equals the HF module's
    hooked tensor (text: 2 + 16 image + 3 positions; vision: CLS + 16 patches; head views split)."""
    table = _table(llava, layer)
    reps = [
        pv.RepresentationConfig(
            layer=layer, component=c, unit="h" if "head_" in c else "pos", intervention_type=pv.CollectIntervention
        )
        for c in table
    ]
    base = _inputs(1)
    (_, collected), _ = pv.IntervenableModel(pv.IntervenableConfig(representations=reps), llava)(base=base)
    store = {}
    with hooks(llava, [(p, port, capture(store, c)) for c, (p, port, _) in table.items()]), torch.no_grad():
        llava(**base)
    for (c, (_, _, heads)), got in zip(table.items(), collected):
        want = store[c] if heads is None else head_view(store[c], heads)
        assert want.shape[-2] == (17 if c.startswith("vision_") else 21), c
        torch.testing.assert_close(got, want, msg=c)


@needs_export
@pytest.mark.parametrize("component", ["block_output", "mlp_output", "vision_block_output"])
@pytest.mark.parametrize("x", [pytest.param(0, marks=cell("llava", "intervene"))])
def test_llava_patch_from_source_image_equals_hooks(llava, component, x):
    """An interchange from a source image at layer 0: in the language stack at image-token positions (from
    ``image_token_positions``), in the vision tower at patches 1 and 6; equal to an HF hook that writes the
    source run's tensor there. One row, then a batch of three (the graph keeps the batch symbolic)."""
    for batch in (1, 3):
        base, source = _inputs(2, batch), _inputs(3, batch)
        source["input_ids"] = base["input_ids"]
        if component.startswith("vision_"):
            pos = [[1, 6]] * batch
        else:
            pos = [row[:3] + row[-2:] for row in pv.image_token_positions(llava, base)]
        im = pv.IntervenableModel({"layer": 0, "component": component}, llava)
        _, out = im(base, [source], unit_locations={"sources->base": ([pos], [pos])})
        path, port, _ = _table(llava, 0)[component]
        seen = {}
        with hooks(llava, [(path, port, capture(seen, "s"))]), torch.no_grad():
            llava(**source)

        def write(t, pos=pos):
            t = t.clone()
            for b, p in enumerate(pos):
                t[b, p] = seen["s"][b, p]
            return t

        with hooks(llava, [(path, port, write)]), torch.no_grad():
            want = llava(**base).logits
        torch.testing.assert_close(out.logits, want)
        with torch.no_grad():
            assert not torch.allclose(out.logits, llava(**base).logits)


def test_image_token_positions(llava):
    """Per row, the positions holding LLaVA's image token, as a hand count finds them (rows may differ)."""
    ids = _inputs(4)["input_ids"]
    ids[1] = torch.cat([ids[1, 1:], ids[1, :1]])  # the second row's image starts one position earlier
    got = pv.image_token_positions(llava, {"input_ids": ids})
    assert got == [list(range(2, 2 + N_IMG)), list(range(1, 1 + N_IMG))]
    assert pv.image_token_positions(llava, ids) == got


def test_image_token_positions_bad_input(llava):
    from _tiny import make_tiny

    with pytest.raises(ValueError, match=r"model: .*splices no image tokens"):
        pv.image_token_positions(make_tiny("llama"), torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(TypeError, match=r"inputs: expected a dict with 'input_ids'"):
        pv.image_token_positions(llava, [[1, 2]])
    with pytest.raises(ValueError, match=r"inputs\['input_ids'\] must be an integer \(batch, seq\)"):
        pv.image_token_positions(llava, torch.zeros(4, dtype=torch.long))
