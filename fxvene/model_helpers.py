"""Model helpers pyvene exports at top level (create_gpt2, create_gru, ...): config, tokenizer, model.

Placeholder: being built (issue 13). Every name below raises NotImplementedError until then.
"""


def _not_built(name):
    def f(*args, **kwargs):
        raise NotImplementedError(f"fxvene.{name} is not built yet")

    f.__name__ = name
    return f


create_gpt2 = _not_built("create_gpt2")
create_gpt2_lm = _not_built("create_gpt2_lm")
create_gpt_neo = _not_built("create_gpt_neo")
create_gpt_neox = _not_built("create_gpt_neox")
create_llama = _not_built("create_llama")
create_olmo = _not_built("create_olmo")
create_gru = _not_built("create_gru")
create_gru_lm = _not_built("create_gru_lm")
create_gru_classifier = _not_built("create_gru_classifier")
create_mlp_classifier = _not_built("create_mlp_classifier")
GRUConfig = _not_built("GRUConfig")
MLPConfig = _not_built("MLPConfig")
