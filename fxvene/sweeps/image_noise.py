"""The noise of a causal trace whose subject is an image spliced into the text (LLaVA).

LLaVA's language stack reads the text's token embeddings with the projected patch features written over the
image placeholder tokens; that spliced tensor is the first block's input, the site where ``causal_trace``
adds its noise for text. With ``pixel_values`` in the inputs the noise goes to the same site, on the rows of
the subject positions (image tokens, ``pv.image_token_positions``), and its default scale is taken from
those spliced features instead of the token embedding matrix (which holds no image).
"""

from __future__ import annotations

import torch

from fxvene.api.image_tokens import image_token_positions
from fxvene.graph.model_io import image_tokens
from fxvene.sweeps.core import TraceNoise, parse_noise

IMAGE_NOISE = "a number, None, 's<k>', 'subjects' or 'u<x>'"


def image_pixels(model, inputs, ids):
    """The ``pixel_values`` of a one-prompt trace's ``inputs`` (None where there are none), checked against
    the image tokens of ``ids``: one image per run of placeholder tokens."""
    px = inputs.get("pixel_values") if hasattr(inputs, "get") else None
    if px is None:
        return None
    spec = image_tokens(model)
    if spec is None:
        raise ValueError(
            f"inputs: {type(model).__name__} splices no images into its text; drop 'pixel_values' "
            "(a vision-language trace takes a LLaVA model)"
        )
    if not isinstance(px, torch.Tensor) or not px.dtype.is_floating_point or px.dim() != 4:
        raise TypeError("inputs['pixel_values'] must be a floating (images, channels, height, width) tensor")
    token, per_image = spec
    n_tokens = int((ids == token).sum())
    if n_tokens != px.shape[0] * per_image:
        raise ValueError(
            f"inputs['pixel_values']: {px.shape[0]} image(s) need {px.shape[0] * per_image} image tokens "
            f"({per_image} each), the prompt has {n_tokens}"
        )
    return px


def image_noise(model, ids, subj, noise_level, replace, corpus_given, n_samples, seed):
    """``(noise, perturb)`` for an image trace: a ``TraceNoise`` and the edit of the first block's input
    (rows: the ``n_samples`` copies of the prompt) that adds it at the subject positions ``subj``.

    ``noise_level``: None or ``"subjects"`` (3 x the std of the spliced image features at every image token
    of the prompt, the clean values, float64), ``"s<k>"`` (k x the std of those features at the subject
    positions), a number (a Gaussian of that std) or ``"u<x>"`` (uniform in [-x, x]). The Gaussians are
    ``RandomState(seed)`` draws, as for text. ``replace``: the subject's features are replaced by the
    noise instead."""
    if not isinstance(replace, bool):
        raise ValueError(f"replace must be True or False, got {replace!r}")
    kind, x = parse_noise(noise_level)
    if corpus_given or kind in ("m", "t"):
        raise ValueError(
            f"noise_level: with pixel_values give {IMAGE_NOISE}; 'm' and 't<d>' (and noise_corpus) "
            "fit token embeddings, which hold no image"
        )
    ref = None
    if kind in ("default", "subjects"):
        noise, ref = TraceNoise("gauss", None, replace=replace, spelling=noise_level), image_token_positions(model, ids)
    elif kind == "s":
        noise, ref = TraceNoise("gauss", None, replace=replace, spelling=noise_level), [subj]
    elif kind == "float":
        noise = TraceNoise("gauss", x, replace=replace, spelling=noise_level)
    else:
        noise = TraceNoise("uniform", x, replace=replace, spelling=f"u{x:g}")
    factor = 3.0 if kind in ("default", "subjects") else x
    subj_t = torch.tensor(subj)

    def perturb(h):
        if noise.scale is None:  # the clean features' std: every base row is the clean prompt here
            noise.scale = factor * float(h[0, torch.tensor(ref[0])].double().std())
        draws = noise.draw(n_samples, len(subj), h.shape[-1], seed).to(h.device)
        h = h.clone()
        part = h[:, subj_t].double()
        h[:, subj_t] = noise.apply(part, draws, part).to(h.dtype)
        return h

    return noise, perturb


__all__ = ["image_noise", "image_pixels"]
