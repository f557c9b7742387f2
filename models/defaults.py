"""Defaults that follow the family: what a call with default arguments uses, chosen from the components
the model's family has (data and one small lookup; no fxvene runtime state).

Causal tracing's three panels (ROME, Meng et al. 2022, fig. 1) are the hidden state, the MLP and the
attention. The MLP panel is ``mlp_activation`` (pyvene's tutorial) where the family has that module, else
the MLP block's own output ``mlp_output``: a mixture-of-experts block (Mixtral, Qwen2-MoE) has no single
activation module, so its panel is the MoE block's output (the weighted sum of the routed experts, plus
the shared expert for Qwen2-MoE). A panel the family has no component for is left out.
"""

from __future__ import annotations

# each panel: the components that can show it, first choice first
TRACE_PANELS = (
    ("block_output",),
    ("mlp_activation", "mlp_output"),
    ("attention_output",),
)
# ROME's streams as pyvene's Causal_Tracing tutorial names them: the first choice of every panel
TRACE_STREAMS = tuple(panel[0] for panel in TRACE_PANELS)


def trace_streams(components):
    """The causal-trace streams a family with ``components`` (names) runs by default: per panel, the first
    choice it has."""
    out = []
    for panel in TRACE_PANELS:
        hit = next((c for c in panel if c in components), None)
        if hit is not None:
            out.append(hit)
    return tuple(out)


def stream_changes(components):
    """``{default stream: what stands for it}`` where ``trace_streams`` departs from
    ``TRACE_STREAMS`` (None: the panel is left out)."""
    chosen = trace_streams(components)
    out = {}
    for panel in TRACE_PANELS:
        hit = next((c for c in panel if c in chosen), None)
        if hit != panel[0]:
            out[panel[0]] = hit
    return out
