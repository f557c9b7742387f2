"""Argument checks for CausalModel: the graph a user describes, checked before anything runs.

pyvene 0.1.8 asserts some of these (a bare AssertionError) and does not check the rest (a parent
that names no variable is a KeyError, a cycle loops forever, a repeated variable makes
``run_forward`` loop forever). Here each is a ValueError or TypeError that names the argument,
what was given and what was expected.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence


def check_names(variables):
    """The variable names: a list or tuple of distinct strings."""
    if isinstance(variables, (str, bytes)) or not isinstance(variables, Sequence):
        raise TypeError(f"variables: expected a list of variable names (strings), got {type(variables).__name__}")
    seen = set()
    for name in variables:
        if not isinstance(name, str):
            raise TypeError(f"variables: every name must be a string, got {name!r} ({type(name).__name__})")
        if name in seen:
            raise ValueError(f"variables: {name!r} is listed twice")
        seen.add(name)
    return list(variables)


def check_per_variable(arg, mapping, names, *, required=True):
    """``mapping`` is a dict keyed by variable names: every name present (if required), no other key."""
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{arg}: expected a dict keyed by variable name, got {type(mapping).__name__}")
    unknown = [k for k in mapping if k not in names]
    if unknown:
        raise ValueError(
            f"{arg}: {unknown} {'is not a variable' if len(unknown) == 1 else 'are not variables'}; "
            f"the variables are {sorted(names)}"
        )
    if required:
        missing = [n for n in sorted(names) if n not in mapping]
        if missing:
            raise ValueError(f"{arg}: no entry for {missing}; every variable needs one")
    return dict(mapping)


def check_values(values, names):
    values = check_per_variable("values", values, names)
    for name, vals in values.items():
        if isinstance(vals, (str, bytes, Mapping)) or not hasattr(vals, "__len__") or not hasattr(vals, "__getitem__"):
            raise TypeError(
                f"values[{name!r}]: expected a list of the values {name!r} can take, got {type(vals).__name__}"
            )
        if len(vals) == 0:
            raise ValueError(f"values[{name!r}]: empty; a variable needs at least one value")
    return values


def check_parents(parents, names):
    parents = check_per_variable("parents", parents, names)
    for name, ps in parents.items():
        if isinstance(ps, (str, bytes)) or not isinstance(ps, Sequence):
            raise TypeError(f"parents[{name!r}]: expected a list of variable names, got {ps!r}")
        for p in ps:
            if p not in names:
                raise ValueError(f"parents[{name!r}]: {p!r} is not a variable; the variables are {sorted(names)}")
    cycle = find_cycle(parents)
    if cycle:
        raise ValueError(f"parents: the graph has a cycle {' -> '.join(cycle)}; a causal model must be acyclic")
    return parents


def find_cycle(parents):
    """A list [a, b, ..., a] of variables along a cycle of parent -> child edges, or None."""
    state = {}  # name -> 1 while on the current path, 2 when finished

    def visit(name, path):
        state[name] = 1
        path.append(name)
        for p in parents[name]:
            if state.get(p) == 1:  # p is a descendant's ancestor and its own: close the loop
                loop = path[path.index(p) :] + [p]
                return loop[::-1]  # as parent -> child
            if p not in state:
                found = visit(p, path)
                if found:
                    return found
        path.pop()
        state[name] = 2
        return None

    for name in parents:
        if name not in state:
            found = visit(name, [])
            if found:
                return found
    return None


def check_functions(functions, names, parents):
    functions = check_per_variable("functions", functions, names)
    for name, fn in functions.items():
        if not callable(fn):
            raise TypeError(f"functions[{name!r}]: expected a callable, got {type(fn).__name__}")
        n = len(parents[name])
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):  # some builtins have none: nothing to check
            continue
        try:
            sig.bind(*([None] * n))
        except TypeError:
            raise TypeError(
                f"functions[{name!r}]: is called with the values of its {n} parent(s) "
                f"{list(parents[name])} in that order, but its signature is {sig}"
            ) from None
    return functions


def check_timesteps(timesteps, names, parents):
    timesteps = check_per_variable("timesteps", timesteps, names)
    for name, ps in parents.items():
        for p in ps:
            if not timesteps[p] < timesteps[name]:
                raise ValueError(
                    f"timesteps: the parent {p!r} (timestep {timesteps[p]}) must come before its child "
                    f"{name!r} (timestep {timesteps[name]})"
                )
    return timesteps


def check_setting(arg, setting, names):
    """A partial setting {variable: value}; None means empty."""
    if setting is None:
        return {}
    if not isinstance(setting, Mapping):
        raise TypeError(f"{arg}: expected a dict {{variable: value}}, got {type(setting).__name__}")
    for key in setting:
        if key not in names:
            raise ValueError(
                f"{arg}: {key!r} is not a variable of this causal model; the variables are {sorted(names)}"
            )
    return setting


def check_variable(arg, name, names):
    if name not in names:
        raise ValueError(f"{arg}: {name!r} is not a variable of this causal model; the variables are {sorted(names)}")
