"""Attribution patching: first-order estimates of every sweep cell from one backward pass.

Placeholder: being built (issue 16). Every name below raises NotImplementedError until then.
"""


def _not_built(name):
    def f(*args, **kwargs):
        raise NotImplementedError(f"fxvene.{name} is not built yet")

    f.__name__ = name
    return f


attribution_patching = _not_built("attribution_patching")
