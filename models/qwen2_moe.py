"""Qwen2-MoE (Qwen2MoeModel, Qwen2MoeForCausalLM, Qwen2MoeForSequenceClassification): the Llama layout with
a sparse mixture-of-experts block (routed experts plus a gated shared expert) as ``mlp``.

``mlp_input``/``mlp_output`` are the MoE block's input and output (routed experts + gated shared expert).
No ``mlp_activation``; the parts are string components: ``model.layers[0].mlp.gate.output`` (router
logits), ``model.layers[0].mlp.shared_expert.output``, ``model.layers[0].mlp.experts[2].output``
(transformers 4; one fused ``mlp.experts`` module on transformers 5). Layers listed in
``mlp_only_layers`` have a dense MLP in the same place, so ``mlp_*`` mean the same there.
"""

from .llama import layout, prefixes
from .spec import Family

FAMILY = Family(
    name="qwen2_moe",
    prefixes=prefixes("Qwen2Moe"),
    components=layout(activation=False),
    n_layers="num_hidden_layers",
)
