"""Component maps shared by the GPT-2-style families whose files are otherwise only data.

``separate_layout``: ``h.{i}`` blocks with separate ``q_proj``/``k_proj``/``v_proj`` and an output
projection (GPT-Neo, GPT-J). ``fused_layout``: one fused q/k/v projection whose output ``split3``
picks from by a ``Component`` ``fused`` layout (GPT-NeoX, Falcon, Phi-3). The Llama layout
has its own ``models.llama.layout``. Each family file still names its paths and config fields.
"""

from .spec import Component as _C

_WEIGHT = dict(pattern="attention_probs", needs="eager")


def separate_layout(attn, io, out, hidden, heads, head, act_dim, positions):
    """``attn``: the module holding the projections; ``io``: the attention module whose input/output are
    ``attention_input``/``attention_output``; ``out``: the output projection's name; the rest are
    config expressions (hidden width, head count, head width, MLP activation width, positions)."""
    comps = {
        "block_input": _C("h.{layer}", "input", dim=hidden),
        "block_output": _C("h.{layer}", "output", dim=hidden),
        "mlp_activation": _C("h.{layer}.mlp.act", "output", dim=act_dim),
        "mlp_output": _C("h.{layer}.mlp", "output", dim=hidden),
        "mlp_input": _C("h.{layer}.mlp", "input", dim=hidden),
        "attention_value_output": _C(f"{attn}.{out}", "input", dim=hidden),
        "head_attention_value_output": _C(f"{attn}.{out}", "input", heads=heads, dim=head),
        "attention_weight": _C(attn, "output", dim=positions, **_WEIGHT),
        "attention_output": _C(io, "output", dim=hidden),
        "attention_input": _C(io, "input", dim=hidden),
    }
    for slot in ("query", "key", "value"):
        comps[f"{slot}_output"] = _C(f"{attn}.{slot[0]}_proj", "output", dim=hidden)
    for slot in ("query", "key", "value"):
        comps[f"head_{slot}_output"] = _C(f"{attn}.{slot[0]}_proj", "output", heads=heads, dim=head)
    return comps


def fused_layout(blocks, attn, qkv, dense, act, act_dim, fused, kv_dim="hidden_size"):
    """``{blocks}.{layer}`` blocks with ``mlp`` (activation module ``act``) and attention ``attn`` whose
    ``qkv`` projection is fused as ``fused`` = (layout, query-head-count expr, head-width expr) and whose
    output projection is ``dense``. ``kv_dim``: the key/value width expression (None: read off the
    graph, where it depends on the layout)."""
    block = f"{blocks}.{{layer}}"
    att, heads, head = f"{block}.{attn}", fused[1], fused[2]
    proj = f"{att}.{qkv}"
    kv = {} if kv_dim is None else {"dim": kv_dim}
    return {
        "block_input": _C(block, "input", dim="hidden_size"),
        "block_output": _C(block, "output", dim="hidden_size"),
        "mlp_activation": _C(f"{block}.mlp.{act}", "output", dim=act_dim),
        "mlp_output": _C(f"{block}.mlp", "output", dim="hidden_size"),
        "mlp_input": _C(f"{block}.mlp", "input", dim="hidden_size"),
        "attention_value_output": _C(f"{att}.{dense}", "input", dim="hidden_size"),
        "head_attention_value_output": _C(f"{att}.{dense}", "input", heads=heads, dim=head),
        "attention_weight": _C(att, "output", dim="max_position_embeddings", **_WEIGHT),
        "attention_output": _C(att, "output", dim="hidden_size"),
        "attention_input": _C(att, "input", dim="hidden_size"),
        "query_output": _C(proj, "output", split3=0, fused=fused, dim="hidden_size"),
        "key_output": _C(proj, "output", split3=1, fused=fused, **kv),
        "value_output": _C(proj, "output", split3=2, fused=fused, **kv),
        "head_query_output": _C(proj, "output", split3=0, fused=fused, heads="layout", dim=head),
        "head_key_output": _C(proj, "output", split3=1, fused=fused, heads="layout", dim=head),
        "head_value_output": _C(proj, "output", split3=2, fused=fused, heads="layout", dim=head),
    }
