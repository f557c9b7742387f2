"""The Llama layout: ``layers.{i}`` blocks with ``self_attn`` (separate ``q_proj``/``k_proj``/``v_proj``,
``o_proj``) and ``mlp`` (``act_fn``), under a base model reached by ``model.`` from its heads.

pyvene 0.1.8's Llama map, with the widths fixed where pyvene assumes ``heads x head_dim == hidden``:
q/o widths are ``num_attention_heads x head_dim`` and k/v widths ``num_key_value_heads x head_dim``
(GQA; pyvene HEAD 68fe7b8). ``attention_weight`` (the attention probabilities) needs eager attention.

Llama, Mistral and Qwen2 are this family. The other families of the layout (Gemma, Gemma 2/3, OLMo,
OLMo 2, Qwen3, Granite, Mixtral, Qwen2-MoE) have their own files that reuse ``layout``: every
component there is the same module port, and the block output is still the decoder layer's output
(extra norms such as Gemma 2's post-attention / post-feedforward norms or the q/k norms of Qwen3 and
OLMo 2 sit inside the block, after the q/k projections pyvene reads).
"""

from .spec import Component, Family

_C = Component
HEAD_DIM = "head_dim|hidden_size/num_attention_heads"
Q_DIM = "num_attention_heads*head_dim|hidden_size"  # q_proj out / o_proj in (Gemma 7B: 16 x 256 != 3072)


def layout(mlp="mlp", activation=True):
    """The component map of the Llama layout. ``mlp``: the name of the block's MLP (``block_sparse_moe``
    for Mixtral on transformers 4); ``activation=False`` for mixture-of-experts blocks, which have no
    single activation module (their experts and router are reached by string components)."""
    attn = "layers.{layer}.self_attn"
    comps = {
        "block_input": _C("layers.{layer}", "input", dim="hidden_size"),
        "block_output": _C("layers.{layer}", "output", dim="hidden_size"),
        "mlp_activation": _C(f"layers.{{layer}}.{mlp}.act_fn", "output", dim="intermediate_size"),
        "mlp_output": _C(f"layers.{{layer}}.{mlp}", "output", dim="hidden_size"),
        "mlp_input": _C(f"layers.{{layer}}.{mlp}", "input", dim="hidden_size"),
        "attention_value_output": _C(f"{attn}.o_proj", "input", dim=Q_DIM),
        "head_attention_value_output": _C(f"{attn}.o_proj", "input", heads="num_attention_heads", dim=HEAD_DIM),
        "attention_weight": _C(attn, "output", dim="max_position_embeddings", pattern="attention_probs", needs="eager"),
        "attention_output": _C(attn, "output", dim="hidden_size"),
        "attention_input": _C(attn, "input", dim="hidden_size"),
        "query_output": _C(f"{attn}.q_proj", "output", dim=Q_DIM),
        "key_output": _C(f"{attn}.k_proj", "output", dim="kv_dim"),
        "value_output": _C(f"{attn}.v_proj", "output", dim="kv_dim"),
        "head_query_output": _C(f"{attn}.q_proj", "output", heads="num_attention_heads", dim=HEAD_DIM),
        "head_key_output": _C(f"{attn}.k_proj", "output", heads="num_key_value_heads", dim=HEAD_DIM),
        "head_value_output": _C(f"{attn}.v_proj", "output", heads="num_key_value_heads", dim=HEAD_DIM),
    }
    if not activation:
        del comps["mlp_activation"]
    return comps


def prefixes(stem, base=None, causal_lm=None, seq_cls=None):
    """Class name -> base-model prefix for a family named ``stem`` (``{stem}Model``, ``{stem}ForCausalLM``,
    ``{stem}ForSequenceClassification`` unless other names are given)."""
    return {
        base or f"{stem}Model": "",
        causal_lm or f"{stem}ForCausalLM": "model.",
        seq_cls or f"{stem}ForSequenceClassification": "model.",
    }


COMPONENTS = layout()

_PREFIXES = {}
for _fam in ("Llama", "Mistral", "Qwen2"):
    _PREFIXES.update(prefixes(_fam))

FAMILY = Family(name="llama", prefixes=_PREFIXES, components=COMPONENTS, n_layers="num_hidden_layers")
