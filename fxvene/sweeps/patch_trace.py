"""Which image patches carry a vision-language model's prediction: ``image_patch_trace`` (LLaVA).

A causal trace whose subject is the image: noise on the spliced patch features at every image token of the
prompt (the first block's input of the language stack, ``fxvene.sweeps.image_noise``), the clean state
restored at one image token and one layer per cell, the cells laid out over the patch grid. Two more reads
check the grid's ends: every image token restored at once at the input (the clean run again) and at each
layer (the text after the image has already read the noisy patches there, so this is less than clean).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fxvene.api.image_tokens import image_token_positions
from fxvene.graph.modes import runs_in_eval_mode
from fxvene.graph.sites import site_view
from fxvene.models import config_value, family_for
from fxvene.sweeps.core import check_layers, engine_for, window_layers
from fxvene.sweeps.engine import ids_mask
from fxvene.sweeps.image_noise import image_noise, image_pixels
from fxvene.sweeps.results import CausalTraceResult
from fxvene.sweeps.sweep import causal_trace


@dataclass
class PatchTraceResult:
    """``grid[row, col, layer]``: p(target) with the image noised and the clean state of the patch at (row,
    col) restored at ``layer`` (a window of layers for the windowed streams), averaged over the samples.
    ``restored_input``: every image token restored at the language stack's input (equals ``clean_prob``);
    ``restored_all[layer]``: every image token restored at once at that layer. ``trace``: the causal trace
    the grid was read from (``positions`` the image tokens, row by row)."""

    grid: torch.Tensor
    clean_prob: float
    corrupted_prob: float
    restored_input: float
    restored_all: torch.Tensor
    stream: str
    layers: list
    positions: list
    trace: CausalTraceResult


def patch_grid(n_tokens):
    """``(rows, cols, skip)`` of one image's ``n_tokens`` image tokens: a square patch grid, after a CLS
    token where the count is a square plus one (``vision_feature_select_strategy="full"``)."""
    for skip in (0, 1):
        side = math.isqrt(n_tokens - skip)
        if side > 0 and side * side == n_tokens - skip:
            return side, side, skip
    raise ValueError(f"inputs: {n_tokens} image tokens per image make no square patch grid")


@runs_in_eval_mode
def image_patch_trace(
    model,
    inputs,
    target_token,
    stream="block_output",
    layers=None,
    noise_level=None,
    n_samples=10,
    window=10,
    seed=1,
    max_rows=None,
    progress=None,
    tracer="auto",
    replace=False,
):
    """Trace which patches of the one image in ``inputs`` (``input_ids`` with the image's placeholder tokens,
    ``pixel_values`` of one image) carry the prediction of ``target_token`` at the last position.

    ``causal_trace`` with the image tokens as ``subject_positions`` and as ``positions``, on one ``stream``
    (``block_output``, or a windowed stream such as ``mlp_activation``); ``noise_level`` as there with
    pixel_values (default: 3 x the std of the spliced image features). Returns a ``PatchTraceResult``
    whose ``grid`` is ``(patch rows, patch columns, layers)``."""
    if not isinstance(stream, str):
        raise ValueError(f"stream: one component name such as 'block_output' or 'mlp_activation', got {stream!r}")
    ids, mask = ids_mask(inputs, "inputs")
    if ids.shape[0] != 1:
        raise ValueError(f"inputs: image_patch_trace takes one prompt (batch 1), got batch {ids.shape[0]}")
    pixels = image_pixels(model, inputs, ids)
    if pixels is None or pixels.shape[0] != 1:
        got = "none" if pixels is None else pixels.shape[0]
        raise ValueError(f"inputs: image_patch_trace takes one image in 'pixel_values', got {got}")
    every = image_token_positions(model, ids)[0]  # the noised subject: every image token (CLS too)
    rows, cols, skip = patch_grid(len(every))
    positions = every[skip:]
    res = causal_trace(
        model,
        inputs,
        subject_positions=every,
        target_token=target_token,
        noise_level=noise_level,
        n_samples=n_samples,
        streams=(stream,),
        window=window,
        seed=seed,
        positions=positions,
        layers=layers,
        max_rows=max_rows,
        progress=progress,
        tracer=tracer,
        prefix="auto",
        replace=replace,
    )
    grid = res.probs[0].reshape(rows, cols, len(res.layers))
    # every image token at once: the same engine and noise as the trace (its cache run repeated)
    fam, _ = family_for(model)
    n_layers = int(config_value(model.config, fam.n_layers))
    sites = [(stream, l) for l in range(n_layers)]
    seq = ids.shape[1]
    eng = engine_for(model, sites, tracer, False, False, "auto", -1, seq=seq, images=True)
    _, perturb = image_noise(model, ids, every, noise_level, replace, False, n_samples, seed)
    with torch.no_grad():
        base, clean = eng.prepare_pair(
            {"input_ids": ids.expand(n_samples, seq), "attention_mask": mask.expand(n_samples, seq)}
            | {"pixel_values": pixels.repeat(n_samples, 1, 1, 1)},
            {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels},
            perturb=perturb,
        )

        def prob(site_ids):  # site index = layer (one stream)
            out = restore_every(eng, base, clean, site_ids, every)
            return float(torch.softmax(out.float(), -1)[:, res.target_token].mean())

        restored_input = prob([])
        per_layer = []
        for l in check_layers(res.layers, n_layers):
            lays = [l] if stream == "block_output" else window_layers(l, window, n_layers)
            per_layer.append(prob(lays))
    return PatchTraceResult(
        grid=grid,
        clean_prob=res.clean_prob,
        corrupted_prob=res.corrupted_prob,
        restored_input=restored_input,
        restored_all=torch.tensor(per_layer),
        stream=stream,
        layers=list(res.layers),
        positions=positions,
        trace=res,
    )


def restore_every(eng, base, clean, site_ids, positions):
    """The readout ``(rows, vocab)`` of the engine's cached base rows with the clean values of every
    position in ``positions`` written at each site of ``site_ids`` (site indices; empty: at the first
    block's input), the rest of the graph run from the first such site on."""
    seq = base["ids"].shape[1]
    first = min((eng.seg_of_site[j] for j in site_ids), default=0)
    vals = {k: v.clone() for k, v in base["cache"][first].items()}
    if not site_ids:
        start_clean = clean["cache"][0][eng.start_node]
        vals[eng.start_node][:, positions] = start_clean[:, positions].to(vals[eng.start_node].dtype)
    ids, mask, start, final = base["ids"], base["mask"], 0, None
    for i in range(first, len(eng.segments)):
        seg = eng.segments[i]
        if seg.tail and eng._tail_ok and not start:  # the position-wise tail: the read position alone
            start = seq - 1
            vals = {k: v[:, start:].contiguous() for k, v in vals.items()}
            ids, mask = ids[:, start:], mask[:, start:]
        for j in seg.ops:
            if j in site_ids:
                s = eng.sites[j]
                keep = [p for p in positions if p >= start]
                if keep:
                    src = site_view(clean["cache"][i][s.node], s)[:, keep]
                    site_view(vals[s.node], s)[:, np.array(keep) - start] = src.to(vals[s.node].dtype)
        feeds = eng._feeds(seg, ids, mask, start, None, None)
        final, vals = eng._step(seg, feeds, vals, {}, None)
    return final


__all__ = ["PatchTraceResult", "image_patch_trace", "patch_grid"]
