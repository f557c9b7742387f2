"""Image classifiers with no family spec (issue 24): pyvene's introductory notebook patches a ResNet with
function interventions on a module-path component (``resnet.embedder.pooler.output``), from a source
image. The same cells run with ``import fxvene as pv`` (``pixel_values`` the lead input) and equal
pyvene 0.1.8 and HF forward hooks, on tiny random ResNet and ConvNeXt configs.
"""

import pytest
import torch
from transformers import ConvNextConfig, ConvNextForImageClassification, ResNetConfig, ResNetForImageClassification

import fxvene as pv

pyvene = pytest.importorskip("pyvene")

SIDE = 32  # pixels; the ResNet embedder's pooler output is SIDE / 4 on a side


def _images(seed, side=SIDE, batch=1):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(batch, 3, side, side, generator=g)
    return {"pixel_values": base}, {"pixel_values": base + 0.5 * torch.randn(batch, 3, side, side, generator=g)}


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    cfg = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=5)
    return ResNetForImageClassification(cfg).eval()


@pytest.fixture(scope="module")
def convnext():
    torch.manual_seed(0)
    cfg = ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5, image_size=SIDE)
    return ConvNextForImageClassification(cfg).eval()


def _corner_mask(side):
    m = torch.zeros(side, side)
    m[side // 2 :, side // 2 :] = 1
    return m


def _run(lib, model, component, fn, base, source):
    wrapped = lib.IntervenableModel({"component": component, "intervention": fn}, model=model)
    return wrapped(base, [source], return_dict=True, output_original_output=True)


def _hooked(model, module, fn, base, source):
    """HF forward hooks: the source run's module output, then the base run with ``fn(base_out, source_out)``."""
    seen = {}
    h = module.register_forward_hook(lambda m, i, o: seen.__setitem__("s", o.detach()))
    with torch.no_grad():
        model(**source)
    h.remove()
    h = module.register_forward_hook(lambda m, i, o: fn(o, seen["s"]))
    with torch.no_grad():
        out = model(**base).logits
    h.remove()
    return out


def test_notebook_cell_resnet_function_intervention(resnet):
    """pyvene_101's "Intervene on ResNet with Lambda Functions": a corner of the pooled feature map from the
    source image; equal to pyvene 0.1.8 and to an HF forward hook."""
    base, source = _images(1)
    m = _corner_mask(SIDE // 4)

    def fn(b, s):
        return b * (1.0 - m) + s * m

    got = _run(pv, resnet, "resnet.embedder.pooler.output", fn, base, source)
    ref = _run(pyvene, resnet, "resnet.embedder.pooler.output", fn, base, source)
    torch.testing.assert_close(got.intervened_outputs.logits, ref.intervened_outputs.logits)
    torch.testing.assert_close(got.original_outputs.logits, ref.original_outputs.logits)
    diff = (got.intervened_outputs.logits - got.original_outputs.logits).sum()
    torch.testing.assert_close(diff, (ref.intervened_outputs.logits - ref.original_outputs.logits).sum())
    assert float(diff.abs()) > 0  # the patch changes the prediction
    hooked = _hooked(resnet, resnet.resnet.embedder.pooler, fn, base, source)
    torch.testing.assert_close(got.intervened_outputs.logits, hooked)


def test_other_image_size_and_batch(resnet):
    """The graph keeps height, width and batch symbolic: a batch of two 48-pixel images equals pyvene."""
    base, source = _images(2, side=48, batch=2)
    m = _corner_mask(12)

    def fn(b, s):
        return b * (1.0 - m) + s * m

    got = _run(pv, resnet, "resnet.embedder.pooler.output", fn, base, source)
    ref = _run(pyvene, resnet, "resnet.embedder.pooler.output", fn, base, source)
    torch.testing.assert_close(got.intervened_outputs.logits, ref.intervened_outputs.logits)


def test_notebook_cell_resnet_trainable_lambda(resnet):
    """pyvene_101's "Intervene on ResNet with Trainable Lambda Functions": an orthogonal DAS projection in a
    lambda; the outputs and the projection's gradients equal pyvene's."""
    base, source = _images(3)
    width = SIDE // 4
    results = {}
    for name, lib in (("fxvene", pv), ("pyvene", pyvene)):
        torch.manual_seed(4)
        v = torch.nn.utils.parametrizations.orthogonal(torch.nn.Linear(width, 3))

        def fn(b, s, v=v):
            return b + ((s @ v.weight.T - b @ v.weight.T) @ v.weight)

        wrapped = lib.IntervenableModel(
            {"component": "resnet.embedder.pooler.output", "intervention": fn}, model=resnet
        )
        out = wrapped(base, [source], return_dict=True, output_original_output=True)
        loss = (out.intervened_outputs.logits - out.original_outputs.logits).sum()
        resnet.zero_grad(set_to_none=True)
        loss.backward()
        results[name] = (loss.detach(), v.parametrizations.weight.original.grad.clone())
    resnet.zero_grad(set_to_none=True)
    torch.testing.assert_close(results["fxvene"][0], results["pyvene"][0])
    torch.testing.assert_close(results["fxvene"][1], results["pyvene"][1])
    assert float(results["fxvene"][1].abs().sum()) > 0


def test_convnext_function_intervention(convnext):
    """The same cell on ConvNeXt: the patch embeddings' output (SIDE / 4 on a side)."""
    base, source = _images(5)
    m = _corner_mask(SIDE // 4)

    def fn(b, s):
        return b * (1.0 - m) + s * m

    got = _run(pv, convnext, "convnext.embeddings.output", fn, base, source)
    ref = _run(pyvene, convnext, "convnext.embeddings.output", fn, base, source)
    torch.testing.assert_close(got.intervened_outputs.logits, ref.intervened_outputs.logits)
    hooked = _hooked(convnext, convnext.convnext.embeddings, fn, base, source)
    torch.testing.assert_close(got.intervened_outputs.logits, hooked)


def test_bad_pixel_values(resnet):
    wrapped = pv.IntervenableModel(
        {"component": "resnet.embedder.pooler.output", "intervention": lambda b, s: b}, model=resnet
    )
    with pytest.raises(ValueError, match=r"pixel_values.*\(batch, channels, height, width\)"):
        wrapped({"pixel_values": torch.randn(3, SIDE, SIDE)}, [{"pixel_values": torch.randn(1, 3, SIDE, SIDE)}])
    with pytest.raises(TypeError, match=r"pixel_values.*floating"):
        wrapped({"pixel_values": torch.ones(1, 3, SIDE, SIDE, dtype=torch.long)})


# ------------------------------------------------------------------------------------ ViT: a family file


@pytest.fixture(scope="module")
def vit():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    cfg = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        image_size=16,
        patch_size=4,
        num_labels=5,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    cfg._attn_implementation = "eager"
    return ViTForImageClassification(cfg).eval()


def _vit_table(model, layer):
    """component -> (HF module path, port, heads?) written from HF's ViT modules on each transformers line."""
    if hasattr(model.vit, "layers"):  # transformers 5
        lay = f"vit.layers.{layer}"
        att, q, k, v, o = (f"{lay}.attention", *(f"{lay}.attention.{p}_proj" for p in "qkvo"))
        mlp_in, act, mlp_out = (f"{lay}.mlp", "input"), f"{lay}.mlp.activation_fn", (f"{lay}.mlp", "output")
    else:
        lay = f"vit.encoder.layer.{layer}"
        att = f"{lay}.attention"
        q, k, v = (f"{att}.attention.{p}" for p in ("query", "key", "value"))
        o = f"{att}.output.dense"
        mlp_in, act = (f"{lay}.intermediate", "input"), f"{lay}.intermediate.intermediate_act_fn"
        mlp_out = (f"{lay}.output.dense", "output")
    return {
        "block_input": (lay, "input", False),
        "block_output": (lay, "output", False),
        "mlp_input": (*mlp_in, False),
        "mlp_activation": (act, "output", False),
        "mlp_output": (*mlp_out, False),
        "attention_input": (att, "input", False),
        "attention_output": (att, "output", False),
        "attention_value_output": (o, "input", False),
        "head_attention_value_output": (o, "input", True),
        "query_output": (q, "output", False),
        "key_output": (k, "output", False),
        "value_output": (v, "output", False),
        "head_query_output": (q, "output", True),
        "head_key_output": (k, "output", True),
        "head_value_output": (v, "output", True),
    }


def test_vit_collect_every_component_equals_hooks(vit):
    """One forward on two 16-pixel images collects every component of the ViT family at both layers; each
    equals the HF module's hooked tensor (head views (batch, heads, CLS + 16 patches, head_dim))."""
    from _hooks import capture, collect_config, head_view, hooks

    sites = [(c, layer) for layer in (0, 1) for c in _vit_table(vit, layer)]
    cfg = collect_config(sites)
    base, _ = _images(6, side=16, batch=2)
    (_, collected), _ = pv.IntervenableModel(cfg, vit)(base=base)
    store = {}
    specs = [
        (p, port, capture(store, (c, layer))) for layer in (0, 1) for c, (p, port, _) in _vit_table(vit, layer).items()
    ]
    with hooks(vit, specs), torch.no_grad():
        vit(**base)
    for (c, layer), got in zip(sites, collected):
        want = store[c, layer]
        if _vit_table(vit, layer)[c][2]:
            want = head_view(want, vit.config.num_attention_heads)
        assert want.shape[-2] == 17 and torch.equal(got, want), (c, layer)


def test_vit_patch_of_patches_equals_hooks(vit):
    """An interchange of image patches (positions 1 and 6: patches 0 and 5) at block_output of layer 0, from a
    source image: equal to an HF hook that writes the source's hidden states there."""
    from _hooks import capture, hooks

    base, source = _images(7, side=16, batch=1)
    im = pv.IntervenableModel({"layer": 0, "component": "block_output"}, vit)
    _, out = im(base, [source], unit_locations={"sources->base": ([[[1, 6]]], [[[1, 6]]])})
    path = _vit_table(vit, 0)["block_output"][0]
    seen = {}
    with hooks(vit, [(path, "output", capture(seen, "s"))]), torch.no_grad():
        vit(**source)

    def write(t):
        t = t.clone()
        t[:, [1, 6]] = seen["s"][:, [1, 6]]
        return t

    with hooks(vit, [(path, "output", write)]), torch.no_grad():
        want = vit(**base).logits
    torch.testing.assert_close(out.logits, want)
    assert not torch.allclose(out.logits, vit(**base).logits)
