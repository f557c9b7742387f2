"""Gemma 3's image-text class (issue 24; ``models/gemma3_vl.py``, transformers 5 only): the language stack
unprefixed, ``vision_*`` the SigLIP vision tower's layers (positions: 16 patches, no CLS), checked against HF
forward hooks. The image's 16 patches are pooled to 4 tokens spliced into the text at the placeholder tokens;
``pv.image_token_positions`` finds them. One model (one export) for the module.
"""

import pytest
import torch
import transformers
from _hooks import capture, head_view, hooks
from _matrix import cell

import fxvene as pv

V5 = int(transformers.__version__.split(".")[0]) >= 5
N_IMG, N_PATCH = 4, 16  # image tokens per image; vision-tower positions ((16 / 4) ** 2 patches)
_MODEL = []


def model():
    if not _MODEL:
        from _tiny import make_gemma3_vl

        _MODEL.append(make_gemma3_vl())
    return _MODEL[0]


def _params(feature):
    # Gemma3ForConditionalGeneration exists on transformers 5 only: the cells exist on that line
    return [pytest.param(0, marks=cell("gemma3", feature), id="gemma3")] if V5 else []


def _inputs(seed, batch=2):
    from _tiny import GEMMA3_IMAGE_TOKEN

    g = torch.Generator().manual_seed(seed)
    text = torch.randint(3, 60, (batch, 5), generator=g)
    ids = torch.cat([text[:, :2], torch.full((batch, N_IMG), GEMMA3_IMAGE_TOKEN), text[:, 2:]], 1)
    return {"input_ids": ids, "pixel_values": torch.randn(batch, 3, 16, 16, generator=g)}


def _table(m, layer):
    """component -> (HF module path, port, heads or None), written from HF's Gemma 3 modules."""
    lm, vt = f"model.language_model.layers.{layer}", f"model.vision_tower.encoder.layers.{layer}"
    tc, vc = m.config.text_config, m.config.vision_config
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


@pytest.mark.parametrize("x", _params("components"))
def test_gemma3_collect_every_component_equals_hooks(x):
    """The spec is the hook table (but ``attention_weight``, which no module returns); one forward on two
    image+text rows collects every component at layers 0 and 1, each equal to the HF module's hooked tensor
    (text: 2 + 4 image + 3 positions; vision: 16 patches; head views split)."""
    from fxvene.models import family_for

    m = model()
    fam, prefix = family_for(m)
    assert (fam.name, prefix) == ("gemma3", "model.")
    assert set(fam.components) - {"attention_weight"} == set(_table(m, 0))
    sites = {(c, layer): v for layer in (0, 1) for c, v in _table(m, layer).items()}
    reps = [
        pv.RepresentationConfig(
            layer=layer, component=c, unit="h" if "head_" in c else "pos", intervention_type=pv.CollectIntervention
        )
        for c, layer in sites
    ]
    base = _inputs(1)
    (_, collected), _ = pv.IntervenableModel(pv.IntervenableConfig(representations=reps), m)(base=base)
    store = {}
    with hooks(m, [(p, port, capture(store, key)) for key, (p, port, _) in sites.items()]), torch.no_grad():
        m(**base)
    for (key, (_, _, heads)), got in zip(sites.items(), collected):
        want = store[key] if heads is None else head_view(store[key], heads)
        assert want.shape[-2] == (N_PATCH if key[0].startswith("vision_") else 9), key
        torch.testing.assert_close(got, want, msg=str(key))


@pytest.mark.parametrize("x", _params("intervene"))
@pytest.mark.parametrize("component", ["block_output", "mlp_output", "vision_block_output"])
def test_gemma3_patch_from_source_image_equals_hooks(component, x):
    """An interchange from a source image at layer 0 (language stack: at the image tokens
    ``image_token_positions`` gives and the last text token; vision tower: patches 1 and 6) equals an HF hook
    that writes the source run's tensor there, and changes the logits."""
    m = model()
    base, source = _inputs(2), _inputs(3)
    source["input_ids"] = base["input_ids"]
    if component.startswith("vision_"):
        pos = [[1, 6]] * 2
    else:
        pos = [row + [8] for row in pv.image_token_positions(m, base)]
        assert pos[0] == [2, 3, 4, 5, 8]
    im = pv.IntervenableModel({"layer": 0, "component": component}, m)
    _, out = im(base, [source], unit_locations={"sources->base": ([pos], [pos])})
    path, port, _ = _table(m, 0)[component]
    seen = {}
    with hooks(m, [(path, port, capture(seen, "s"))]), torch.no_grad():
        m(**source)

    def write(t):
        t = t.clone()
        for b, p in enumerate(pos):
            t[b, p] = seen["s"][b, p]
        return t

    with hooks(m, [(path, port, write)]), torch.no_grad():
        want = m(**base).logits
    torch.testing.assert_close(out.logits, want)
    with torch.no_grad():
        assert not torch.allclose(out.logits, m(**base).logits)
