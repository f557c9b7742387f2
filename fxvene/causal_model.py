"""pyvene's CausalModel: variables, values, parents and mechanisms of a high-level causal model.

Placeholder: being built (issue 13). Every name below raises NotImplementedError until then.
"""


def _not_built(name):
    def f(*args, **kwargs):
        raise NotImplementedError(f"fxvene.{name} is not built yet")

    f.__name__ = name
    return f


CausalModel = _not_built("CausalModel")
