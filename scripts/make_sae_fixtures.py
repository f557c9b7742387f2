"""Write random SAEs in SAELens's on-disk format and SAELens's own outputs on them (tests/fixtures/sae/).

Run once in a virtual environment that has sae-lens (it cannot share one with the transformers lines
fxvene tests), e.g.::

    python -m venv /tmp/venv-sae && /tmp/venv-sae/bin/pip install torch==2.13.0 sae-lens
    /tmp/venv-sae/bin/python scripts/make_sae_fixtures.py

Each case is a directory ``<case>/`` with ``cfg.json`` and ``sae_weights.safetensors`` (as SAELens
writes them: SAELens 6's layout with ``metadata``, or the flat layout of SAELens <= 5) and
``reference.safetensors``: an input ``x``, SAELens's ``encode(x)``, ``decode(encode(x))``, its
error-term output, and the error-term output after each feature edit of ``FEATURES`` (ablate, set,
clamp, scale by ``VALUE``). tests/test_sae.py reads them without sae-lens installed.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "sae")
D_IN, D_SAE = 24, 32  # d_in: the tiny test GPT-2's width
FEATURES, VALUE = [1, 4, 9, 30], 0.75
HOOK = "blocks.1.hook_resid_pre"


def _v6(arch, norm="none", b_dec_in=True, **extra):
    return {
        "architecture": arch,
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": b_dec_in,
        "normalize_activations": norm,
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": "6.54.12",
            "model_name": "gpt2",
            "hook_name": HOOK,
            "model_class_name": "HookedTransformer",
            "model_from_pretrained_kwargs": {"center_writing_weights": False},
        },
        **extra,
    }


def _v5(act="relu", **extra):
    return {
        "model_name": "gpt2",
        "hook_point": HOOK,
        "hook_point_layer": 1,
        "hook_point_head_index": None,
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "device": "cpu",
        "activation_fn_str": act,
        "apply_b_dec_to_input": True,
        "normalize_activations": False,
        "sae_lens_training_version": "3.13.0",
        "context_size": 128,
        "dataset_path": "none",
        **extra,
    }


CASES = {
    "standard_v5": _v5(),
    "standard_v6_layer_norm": _v6("standard", norm="layer_norm"),
    "jumprelu_v6": _v6("jumprelu", b_dec_in=False),
    "topk_v6_rescaled": _v6("topk", k=5, rescale_acts_by_decoder_norm=True),
    "topk_v5": _v5("topk", activation_fn_kwargs={"k": 6}),
    "gated_v6_norm_rescale": _v6("gated", norm="constant_norm_rescale"),
}


def weights(arch, g):
    def r(*shape, s=0.3):
        return torch.randn(*shape, generator=g) * s

    w = {"W_enc": r(D_IN, D_SAE), "W_dec": r(D_SAE, D_IN), "b_dec": r(D_IN, s=0.1)}
    if arch == "gated":
        w.update(b_gate=r(D_SAE, s=0.2), b_mag=r(D_SAE, s=0.2), r_mag=r(D_SAE, s=0.2))
    else:
        w["b_enc"] = r(D_SAE, s=0.2)
    if arch == "jumprelu":
        w["threshold"] = torch.rand(D_SAE, generator=g) * 0.3
    return w


def main():
    from sae_lens import SAE

    g = torch.Generator().manual_seed(0)
    for case, cfg in CASES.items():
        d = os.path.join(OUT, case)
        os.makedirs(d, exist_ok=True)
        arch = cfg.get("architecture", "topk" if cfg.get("activation_fn_str") == "topk" else "standard")
        save_file(weights(arch, g), os.path.join(d, "sae_weights.safetensors"))
        with open(os.path.join(d, "cfg.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        sae = SAE.load_from_disk(d)
        x = torch.randn(2, 5, D_IN, generator=g) * 2 + 0.5
        with torch.no_grad():
            acts = sae.encode(x)
            recon = sae.decode(acts)
            error = x - recon
            ref = {"x": x, "acts": acts, "recon": recon, "out_error": recon + error}
            edits = {
                "ablate": torch.zeros_like(acts),
                "set": torch.full_like(acts, VALUE),
                "clamp": acts.clamp(max=VALUE),
                "scale": acts * VALUE,
            }
            for name, target in edits.items():
                edited = acts.clone()
                edited[..., FEATURES] = target[..., FEATURES]
                sae.encode(x)  # normalising SAEs decode with the statistics of their last input
                ref[f"out_{name}"] = sae.decode(edited) + error
        save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(d, "reference.safetensors"))
        print(case, {k: tuple(v.shape) for k, v in ref.items()}, file=sys.stderr)
    import sae_lens

    with open(os.path.join(OUT, "VERSION"), "w") as f:
        f.write(f"sae-lens {sae_lens.__version__}, torch {torch.__version__}\n")


if __name__ == "__main__":
    main()
