"""What sweeps return: :class:`SweepResult` (patching grids), :class:`CausalTraceResult` (ROME
causal tracing), and :func:`plot_causal_trace`, the heatmaps of a causal trace."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class SweepResult:
    """``values[component, layer, position, (head,) example, k]``: the readout of every cell
    (last-position logits over the vocabulary, or over ``tokens``; probabilities with
    ``metric="prob"``). ``base`` is the unpatched readout ``[example, k]``."""

    values: torch.Tensor
    base: torch.Tensor
    components: list
    layers: list
    positions: list
    heads: Optional[list] = None
    tokens: Optional[list] = None  # the token ids of the last axis (None: the whole vocabulary)
    metric: str = "logits"  # "logits" or "prob"


@dataclass
class CausalTraceResult:
    """``probs[stream, position, layer]``: p(target) with the subject corrupted and the clean
    state restored at (position, layer) (a window of layers centred on ``layer`` for the
    windowed streams), averaged over the noise samples."""

    probs: torch.Tensor
    clean_prob: float
    corrupted_prob: float
    streams: list
    positions: list
    layers: list
    window: int
    subject_positions: list
    target_token: int
    noise_level: float
    n_samples: int
    input_ids: Optional[list] = None  # the prompt's token ids (for labels: plot_causal_trace(tokenizer=...))


def plot_causal_trace(result, tokens=None, path=None, title=None):
    """Draw the heatmaps of a :class:`CausalTraceResult` (one per stream; matplotlib needed:
    ``pip install fxvene[plots]``). ``tokens``: labels for the positions (the subject ones get
    a ``*``). Saves to ``path`` when given; returns the figure."""
    try:
        import matplotlib

        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("plot_causal_trace needs matplotlib: pip install matplotlib (or fxvene[plots])") from e
    if not isinstance(result, CausalTraceResult):
        raise TypeError(f"result must be a CausalTraceResult, got {type(result).__name__}")
    labels = [str(p) for p in result.positions] if tokens is None else [str(t) for t in tokens]
    if tokens is not None and len(labels) != len(result.positions):
        if len(labels) >= max(result.positions) + 1:
            labels = [labels[p] for p in result.positions]
        else:
            raise ValueError(f"tokens: {len(labels)} labels for {len(result.positions)} positions")
    labels = [l + "*" if p in result.subject_positions else l for l, p in zip(labels, result.positions)]
    cmaps = {"block_output": "Purples", "mlp_activation": "Greens", "attention_output": "Reds"}
    n = len(result.streams)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 0.35 * len(labels) + 1.6), squeeze=False)
    for ax, st, mat in zip(axes[0], result.streams, result.probs):
        im = ax.imshow(mat.numpy(), cmap=cmaps.get(st, "Blues"), aspect="auto", vmin=0)
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels)
        ax.set_xticks(range(len(result.layers)))
        ax.set_xticklabels([str(l) for l in result.layers], fontsize=7)
        w = "" if st == "block_output" else f" (window {result.window})"
        ax.set_title(f"{st}{w}", fontsize=9)
        ax.set_xlabel("layer")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(title or f"p(target) clean {result.clean_prob:.3f}, corrupted {result.corrupted_prob:.3f}", fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
