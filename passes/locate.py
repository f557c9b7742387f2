"""Locate: find the fx node of a module port (and finer points inside a module).

The *region* of a module path is the set of nodes whose ``nn_module_stack`` contains
that path. Its *output* is the one tensor-valued region node used outside the region;
its *input* is the first outside tensor (not a parameter) that the region consumes.
Finer points are structural patterns inside a region, matched with networkx.
"""

from __future__ import annotations

import functools
import re

import torch


class LocateError(ValueError):
    """A component did not resolve to exactly one node.

    ``candidates`` lists the names of the nodes it resolved to (empty when none), so that
    tools (``fxvene.inspection.tables``) can report them without parsing the message.
    """

    def __init__(self, message, candidates=()):
        super().__init__(message)
        self.candidates = tuple(candidates)


def module_paths(node):
    """The module paths in a node's ``nn_module_stack`` (both frontends' formats)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ()
    paths = []
    for key, val in stack.items():
        if isinstance(val, tuple) and val and isinstance(val[0], str):
            paths.append(_norm(val[0]))
        else:
            paths.append(_norm(key))
    return tuple(paths)


@functools.lru_cache(maxsize=8192)  # pure; region() calls it for every node's stack (10x faster tables)
def _norm(path):
    # export writes "L['self'].transformer.h[0]" or "transformer.h.0"; fx writes "transformer.h.0"
    path = re.sub(r"^L\['self'\]\.?", "", path)
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    path = path.replace("._modules['", ".").replace("']", "")
    return path.strip(".")


def normalize_path(path):
    """pyvene's string paths ("transformer.h[0].mlp") to dotted module paths."""
    return _norm(path)


def is_tensor_node(node):
    v = node.meta.get("val")
    return isinstance(v, torch.Tensor)


def region(gm, path):
    """Nodes of ``gm`` inside module ``path``, in graph order."""
    path = _norm(path)
    return [n for n in gm.graph.nodes if path in module_paths(n)]


def _is_param(node):
    return node.op == "get_attr"


def _escaping(nodes):
    inside = set(nodes)
    out = [n for n in nodes if is_tensor_node(n) and not _is_param(n) and any(u not in inside for u in n.users)]
    if len(out) > 1:  # a cast of an outside tensor the module merely passed on is not its product
        kept = [n for n in out if not _cast_of_outside(n, inside)]
        out = kept or out
    return out


def _cast_of_outside(node, inside):
    """Whether ``node`` is a dtype/device cast of a tensor made outside the region (BLIP's text layers cast the
    attention masks they are given; the next layer reads the cast, which then looks like an output)."""
    if node.op not in ("call_function", "call_method") or _target_name(node) not in ("to", "_to_copy"):
        return False
    src = node.args[0] if node.args else None
    return hasattr(src, "op") and src not in inside


def output_candidates(gm, path):
    """Tensor-valued nodes of module ``path``'s region used outside it (``module_output`` wants one)."""
    return _escaping(region(gm, path))


def module_output(gm, path):
    nodes = region(gm, path)
    if not nodes:
        raise LocateError(f"module {path!r} has no nodes in the traced graph")
    escaping = _escaping(nodes)
    if len(escaping) != 1:
        raise LocateError(
            f"output of module {path!r} resolves to {len(escaping)} nodes "
            f"(candidates: {[n.name for n in escaping]}); expected exactly one",
            candidates=[n.name for n in escaping],
        )
    return escaping[0]


def module_input(gm, path):
    nodes = region(gm, path)
    if not nodes:
        raise LocateError(f"module {path!r} has no nodes in the traced graph")
    inside = set(nodes)
    outside = []
    for n in nodes:
        for a in n.all_input_nodes:
            if a not in inside and not _is_param(a) and is_tensor_node(a) and a not in outside:
                outside.append(a)
    if not outside:
        raise LocateError(f"input of module {path!r}: the region consumes no outside tensor")
    # a module whose output has its input's shape (a block, attention, an MLP) may first read another
    # outside tensor (transformers 4's Gemma 2 sliding layers edit the attention mask before anything
    # else): the input is then the first outside tensor of the output's shape
    escaping = _escaping(nodes)
    if len(escaping) == 1:
        shape = str(tuple(escaping[0].meta["val"].shape))
        for a in outside:
            if str(tuple(a.meta["val"].shape)) == shape:
                return a
    return outside[0]


def region_users(node, path):
    """Users of ``node`` inside module ``path``'s region."""
    inside = set(region(node.graph.owning_module, path))
    return [u for u in node.users if u in inside]


def to_networkx(gm, nodes=None):
    """The fx graph (or a node subset) as a networkx DiGraph; nodes carry op/target/name."""
    import networkx as nx  # here, not at module level: sweeps and generation never need it (cold start)

    g = nx.DiGraph()
    keep = set(nodes) if nodes is not None else None
    for n in gm.graph.nodes:
        if keep is not None and n not in keep:
            continue
        g.add_node(n.name, op=n.op, target=_target_name(n), node=n)
    for n in gm.graph.nodes:
        if keep is not None and n not in keep:
            continue
        for a in n.all_input_nodes:
            if keep is None or a in keep:
                g.add_edge(a.name, n.name)
    return g


def _target_name(n):
    t = n.target
    if isinstance(t, str):
        return t
    name = getattr(t, "__name__", None) or str(t)
    # aten.softmax.int -> softmax ; torch.nn.functional.softmax -> softmax
    name = str(getattr(t, "_opname", name))
    return name.split(".")[-1] if "aten" in str(t) else name


PATTERNS = {}


def pattern(name):
    def deco(fn):
        PATTERNS[name] = fn
        return fn

    return deco


_SOFTMAX = {"softmax", "_softmax"}
_PASS_THROUGH = {"type", "to", "dropout", "contiguous", "_to_copy", "clone", "float"}
_MATMUL = {"matmul", "bmm", "baddbmm"}


@pattern("attention_probs")
def attention_probs(gm, path):
    """The attention probabilities of module ``path``: softmax -> (dtype casts, dropout)* -> matmul(·, V).

    The node returned is the last one before the matmul (what ``attn_dropout`` receives in eager
    GPT-2 is the softmax after the dtype cast; in pyvene this is ``attention_weight``).
    """
    nodes = region(gm, path)
    g = to_networkx(gm, nodes)
    found, stops = [], []  # stops: where a softmax's walk to the matmul ended (the op it cannot look through)
    for name, data in g.nodes(data=True):
        if data["target"] not in _SOFTMAX:
            continue
        cur = name
        chain = [cur]
        while True:
            succ = list(g.successors(cur))
            if len(succ) != 1:
                stops.append(f"{len(succ)} users of {cur!r}")
                break
            t = g.nodes[succ[0]]["target"]
            if t in _MATMUL:
                found.append(chain)
                break
            if t not in _PASS_THROUGH and not (g.nodes[succ[0]]["op"] == "call_module" and "drop" in t):
                stops.append(f"{t!r} after {cur!r}")
                break
            cur = succ[0]
            chain.append(cur)
    if len(found) != 1:
        if found:
            why = "the probabilities are ambiguous here"
        elif stops:  # eager attention, but the probabilities are not fed straight to the matmul with V
            why = (
                f"the softmax reaches the matmul with the values only through an operation this pattern does not "
                f"look through ({'; '.join(stops)}; e.g. the reshape of Falcon's ALiBi attention), so "
                "attention_weight is not available for this attention variant"
            )
        else:  # no softmax in the module: a fused kernel (SDPA, flash)
            why = "there is no softmax in this module: attention_weight needs eager attention (attn_implementation='eager')"
        raise LocateError(
            f"attention probabilities of {path!r}: found {len(found)} softmax->matmul chains; {why}",
            candidates=[c[-1] for c in found],
        )
    chain = found[0]
    # pyvene hooks the *input* of attn_dropout: the node before a dropout in the chain, else the last
    by_name = {n.name: n for n in nodes}
    for i, nm in enumerate(chain):
        if i > 0 and (
            g.nodes[nm]["target"] == "dropout"
            or (by_name[nm].op == "call_module" and "drop" in str(by_name[nm].target))
        ):
            return by_name[chain[i - 1]]
    return by_name[chain[-1]]
