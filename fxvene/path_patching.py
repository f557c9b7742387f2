"""Path patching: a sender's effect patched only along its paths into chosen receivers.

Placeholder: being built (issue 16). Every name below raises NotImplementedError until then.
"""


def _not_built(name):
    def f(*args, **kwargs):
        raise NotImplementedError(f"fxvene.{name} is not built yet")

    f.__name__ = name
    return f


path_patching = _not_built("path_patching")
