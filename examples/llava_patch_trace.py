"""Which image patches of a LLaVA model carry its prediction: causal tracing over the patch grid.

Builds a tiny random LLaVA offline (from configs, no download): a CLIP vision tower whose 6 x 6 patch
features are spliced into the text at 36 image tokens, and a 3-layer Llama-layout language model. The image
is the subject: ``pv.image_patch_trace`` adds noise to the spliced patch features (3 x their std), then
restores the clean state of one patch at one layer per cell (``block_output`` along the language stack), and
lays the cells out as ``grid[patch row, patch column, layer]``. Restoring every patch at the input gives the
clean probability back; restoring every patch at a layer gives less (the text after the image has already
read the noisy patches). Writes one heatmap per layer (``--out``) where matplotlib is installed.

LLaVA is traced with torch.export on transformers 5; on transformers 4 its image merge is not exportable,
and the script says so and stops.
"""

import argparse

import torch
import transformers

import fxvene as pv

IMAGE_TOKEN = 127  # the last id of the tiny vocabulary: LLaVA's image placeholder
SIDE, PATCH = 12, 2  # 12-pixel images, 2-pixel patches: a 6 x 6 grid of image tokens


def build_model(seed=0):
    """A seeded tiny random LLaVA (``LlavaForConditionalGeneration``), eager attention."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    text = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=SIDE,
        patch_size=PATCH,
    )
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN, vision_feature_layer=-1)
    cfg.image_seq_length = (SIDE // PATCH) ** 2
    cfg._attn_implementation = "eager"
    return LlavaForConditionalGeneration(cfg).eval()


def make_inputs(seed=1):
    """One prompt: 3 text tokens, the image's 36 placeholder tokens, 4 text tokens; one random image."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(3, IMAGE_TOKEN, (1, 7), generator=g)
    image = torch.full((1, (SIDE // PATCH) ** 2), IMAGE_TOKEN)
    ids = torch.cat([text[:, :3], image, text[:, 3:]], 1)
    return {"input_ids": ids, "pixel_values": torch.randn(1, 3, SIDE, SIDE, generator=g)}


def run(model, inputs, n_samples=10):
    """The patch trace of the clean run's most likely next token."""
    with torch.no_grad():
        target = int(model(**inputs).logits[0, -1].argmax())
    return pv.image_patch_trace(model, inputs, target, n_samples=n_samples)


def plot(res, path):
    """One heatmap of the grid per layer; returns False where matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    grid = res.grid.numpy()
    lo, hi = float(grid.min()), float(grid.max())
    fig, axes = plt.subplots(1, grid.shape[2], figsize=(2.6 * grid.shape[2], 2.8), squeeze=False)
    for layer, ax in zip(res.layers, axes[0]):
        im = ax.imshow(grid[:, :, layer], vmin=lo, vmax=hi, cmap="Purples")
        ax.set_title(f"layer {layer}")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="p(target), patch restored")
    fig.suptitle(f"clean {res.clean_prob:.4f}, image noised {res.corrupted_prob:.4f}")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="llava_patch_trace.png")
    p.add_argument("--quick", action="store_true", help="fewer noise samples (CI smoke test)")
    args = p.parse_args(argv)
    if int(transformers.__version__.split(".")[0]) < 5:
        print("LLaVA's image merge exports on transformers 5 only; skipped on", transformers.__version__)
        return None
    res = run(build_model(), make_inputs(), n_samples=3 if args.quick else 10)
    rows, cols, layers = res.grid.shape
    print(f"grid: {rows} patch rows x {cols} patch columns x {layers} layers")
    print(f"p(target): clean {res.clean_prob:.5f}, image noised {res.corrupted_prob:.5f}")
    print(f"every patch restored at the input: {res.restored_input:.5f}")
    print("every patch restored at each layer:", [round(v, 5) for v in res.restored_all.tolist()])
    for layer in res.layers:
        g = res.grid[:, :, layer]
        if float(g.max() - g.min()) < 1e-9:  # the last layer: image rows no longer reach the read position
            print(f"layer {layer}: no patch changes the prediction")
            continue
        r, c = divmod(int(g.argmax()), cols)
        print(f"layer {layer}: the strongest patch is row {r}, column {c}")
    if plot(res, args.out):
        print(f"wrote {args.out}")
    else:
        print("matplotlib is not installed: no figure (pip install 'fxvene[plots]')")
    return res


if __name__ == "__main__":
    main()
