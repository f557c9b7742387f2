"""On-disk cache of exported graphs: the ``torch.export`` of a model is paid once per machine.

What is stored
--------------
One JSON file per graph, **without weights**, plus the few constant tensors the trace created
itself (e.g. a scalar ``finfo.min``) as safetensors bytes in base64. No pickle, no stored Python
code; loading reattaches the live model's own parameters and buffers (nothing of the model is ever
copied to disk). Two forms:

* ``"graph"``: the finished fx graph in fxvene's own format (``fxvene.graph.format``: nodes,
  targets, arguments, shapes as plain data). The KV-cache step graphs are stored this way: a load
  builds the graph directly, without torch's deserialiser (the cost of a warm first call).
* ``"program"``: the ``ExportedProgram``'s own JSON serialisation (``torch._export.serde``, the
  JSON part of ``torch.export.save``): forward graphs, and any graph the own format does not cover.

The key is a hash of: the model class, its config (``to_json_string``), attention implementation,
dtype and device kind, the classes of tensor-subclass weights (quantised models), the versions of
torch, transformers and fxvene (and a hash of the fxvene sources that build the graph), the graph
kind (forward / KV-cache step) and its input signature.

Every load is validated by its caller exactly like a fresh trace (the graph's outputs against the
model's own on example inputs); an entry that fails (stale, corrupt, truncated) is deleted with a
debug-level log note and the graph is exported again.

Writers write a temporary file in the cache directory and ``os.replace`` it into place, so a
reader never sees a half-written entry and two processes exporting the same graph at once both
leave a valid one. Location: ``$FXVENE_CACHE_DIR`` (default ``~/.cache/fxvene``);
``FXVENE_CACHE=0`` turns the cache off. ``clear_graph_cache`` (or ``fxvene cache clear``)
empties it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("fxvene.graph.cache")

FORMAT = 3
_SUFFIX = ".fxgraph.json"
_SOURCE_HASH = None


def enabled():
    return os.environ.get("FXVENE_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir():
    """The cache directory (not created here): ``$FXVENE_CACHE_DIR`` or ``~/.cache/fxvene``."""
    d = os.environ.get("FXVENE_CACHE_DIR")
    if d:
        return Path(d).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fxvene"


def _entries(d):
    return sorted(d.glob("*" + _SUFFIX)) if d.is_dir() else []


def clear_graph_cache():
    """Delete every cached graph (and stray temporary files); returns how many files were removed."""
    d = cache_dir()
    n = 0
    if not d.is_dir():
        return 0
    for p in list(_entries(d)) + list(d.glob(".tmp-*")):
        try:
            p.unlink()
            n += 1
        except FileNotFoundError:
            pass
    return n


def cache_info():
    """``{'dir', 'enabled', 'entries', 'bytes', 'graphs': [{'file', 'kind', 'model', 'bytes'}]}``."""
    d = cache_dir()
    graphs, total = [], 0
    for p in _entries(d):
        size = p.stat().st_size
        total += size
        kind = model = "?"
        try:
            with open(p, encoding="utf-8") as f:
                head = json.loads(f.read()).get("about", {})
            kind, model = head.get("kind", "?"), head.get("model", "?")
        except (OSError, ValueError, AttributeError):
            pass
        graphs.append({"file": p.name, "kind": kind, "model": model, "bytes": size})
    return {"dir": str(d), "enabled": enabled(), "entries": len(graphs), "bytes": total, "graphs": graphs}


# ------------------------------------------------------------------------------------------- keys


def _source_hash():
    """The fxvene sources whose code decides what is exported (wrappers, examples, dynamic dims)."""
    global _SOURCE_HASH
    if _SOURCE_HASH is None:
        h = hashlib.sha256()
        here = Path(__file__).parent
        for name in ("tracing.py", "step_graphs.py", "cache.py", "format.py"):
            try:
                h.update((here / name).read_bytes())
            except OSError:
                h.update(name.encode())
        _SOURCE_HASH = h.hexdigest()[:16]
    return _SOURCE_HASH


def key_for(model, kind, signature):
    """``(hex key, description)`` of the graph ``kind`` (e.g. ``"forward"``, ``"step:chunk"``) of
    ``model`` with input ``signature`` (a JSON-able value)."""
    import torch
    import transformers

    from fxvene._version import __version__
    from fxvene.graph.offload import is_dispatched

    if is_dispatched(model):  # weights outside the model (accelerate): its graphs are not cached
        return None, None
    cfg = model.config
    try:
        cfg_json = json.loads(cfg.to_json_string(use_diff=False))
    except Exception:  # noqa: BLE001 - an unusual config: no cache key, no cache
        return None, None
    for k in ("_name_or_path", "transformers_version"):
        cfg_json.pop(k, None)
    p = next(model.parameters())
    about = {
        "format": FORMAT,
        "kind": kind,
        "model": f"{type(model).__module__}.{type(model).__qualname__}",
        "config": cfg_json,
        "attn_implementation": str(getattr(cfg, "_attn_implementation", None)),
        "dtype": str(p.dtype),
        "device": p.device.type,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "fxvene": __version__,
        "fxvene_sources": _source_hash(),
        "signature": signature,
    }
    kinds = _tensor_kinds(model)
    if kinds:  # tensor-subclass weights (torchao's Int8Tensor ...): a graph of its own
        about["tensor_kinds"] = kinds
    blob = json.dumps(about, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32], about


def _tensor_kinds(model):
    """The classes of ``model``'s parameters and buffers that are tensor subclasses (sorted names; none
    for plain weights): an export flattens such weights into their inner tensors, so a quantised model
    and the plain model of the same config have different graphs."""
    import torch

    plain = (torch.Tensor, torch.nn.Parameter, torch.nn.Buffer)
    found = {type(t) for t in (*model.parameters(), *model.buffers()) if type(t) not in plain}
    return sorted(f"{c.__module__}.{c.__qualname__}" for c in found)


def _path(key):
    return cache_dir() / f"{key}{_SUFFIX}"


# ------------------------------------------------------------------------------------- load/save


def _quiet_torch_logs():
    """torch's serde logs warnings for harmless things (unused symbols); they are not the user's business."""
    from fxvene.graph.progress import quiet_loggers

    return quiet_loggers("torch._export.serde.serialize", "torch.fx.experimental.symbolic_shapes", "torch._export")


class _MemoSympy:
    """Stands in for the ``sympy`` module inside torch's deserialiser: each shape expression string
    (srepr: self-contained, symbols with their assumptions) is parsed once, not once per use."""

    def __init__(self, real):
        self._real = real
        self._memo = {}

    def __getattr__(self, name):
        return getattr(self._real, name)

    def sympify(self, expr, *args, **kwargs):
        if not isinstance(expr, str) or args:
            return self._real.sympify(expr, *args, **kwargs)
        out = self._memo.get(expr)
        if out is None:
            out = self._memo[expr] = self._real.sympify(expr, *args, **kwargs)
        return out


@contextmanager
def _memo_sympify(serde):
    real = serde.sympy
    serde.sympy = _MemoSympy(real)
    try:
        yield
    finally:
        serde.sympy = real


@contextmanager
def _shared_tensor_metas(serde):
    """Inside torch's deserialiser, nodes with the same stored tensor metadata (sizes, strides,
    dtype, device) share one fake tensor: a 12-layer graph has ~700 tensor values but a few dozen
    distinct metas, and each fake tensor with symbolic sizes costs about a millisecond to build."""
    cls = serde.GraphModuleDeserializer
    real = cls.deserialize_tensor_meta
    memo = {}

    def shared(self, tensor_meta):
        key = (id(self), repr(tensor_meta))
        out = memo.get(key)
        if out is None:
            out = memo[key] = real(self, tensor_meta)
        return out

    cls.deserialize_tensor_meta = shared
    try:
        yield
    finally:
        cls.deserialize_tensor_meta = real


def _live_tensors(root):
    named = dict(root.named_parameters(remove_duplicate=False))
    named.update(dict(root.named_buffers(remove_duplicate=False)))
    return named


def save(key, about, ep, root, graph=None):
    """Store ``ep`` (exported from ``root``) under ``key``; returns the path, or None if it was not
    storable (custom objects, a read-only directory: the cache is only an optimisation).

    ``graph``: the finished GraphModule fxvene made of ``ep`` (its ``meta`` names the model tensor
    each attribute aliases, ``fxvene_attr_sources``): stored in fxvene's own format
    (``fxvene.graph.format``), which loads without torch's deserialiser; a graph that format does
    not cover is stored as the exported program."""
    if key is None or not enabled():
        return None
    from safetensors.torch import save as st_save

    live = _live_tensors(root)
    if graph is not None:
        from fxvene.graph import format as graph_format

        try:
            doc, consts = graph_format.dump(
                graph, graph.meta.get("fxvene_attr_sources", {}), live, graph.meta.get("fxvene_param_attrs", ())
            )
        except Exception as e:  # noqa: BLE001 - graph_format.Unsupported, or a surprise: torch's format
            log.debug(
                "fxvene graph cache: %s stored as an exported program (%s: %s)", about.get("kind"), type(e).__name__, e
            )
        else:
            return _write(
                key,
                about,
                {"graph": doc, "constants": base64.b64encode(st_save(consts)).decode("ascii") if consts else ""},
            )
    return _save_program(key, about, ep, live)


def _write(key, about, body):
    """Write one entry atomically (a temporary file renamed into place); None if it cannot be written."""
    try:
        d = cache_dir()
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=_SUFFIX, dir=d)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"about": about, **body}, f)
            os.replace(tmp, _path(key))
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except Exception as e:  # noqa: BLE001 - the cache never breaks tracing
        log.debug("fxvene graph cache: could not store %s: %s", about.get("kind"), e)
        return None
    return _path(key)


def _save_program(key, about, ep, live):
    import torch
    from safetensors.torch import save as st_save
    from torch._export.serde import serialize as serde

    own = {}
    for name, val in ep.constants.items():
        if name in live:
            continue  # a buffer of the model: reattached on load
        if not isinstance(val, torch.Tensor):
            log.debug("fxvene graph cache: %s has a non-tensor constant %s; not cached", about["kind"], name)
            return None
        own[name] = val.detach().cpu().contiguous()
    for name in ep.state_dict:
        if name not in live:
            log.debug("fxvene graph cache: state %s is not a tensor of the model; not cached", name)
            return None
    guards = getattr(ep, "_guards_code", None)
    try:
        ep._guards_code = []  # Python source of export's input guards: never stored (fxvene strips the guards)
        with _quiet_torch_logs():
            art = serde.serialize(
                ep, serialize_state_dict=False, serialize_constants=False, serialize_example_inputs=False
            )
        body = {
            "program": art.exported_program.decode("utf-8"),
            "constants": base64.b64encode(st_save(own)).decode("ascii") if own else "",
        }
    except Exception as e:  # noqa: BLE001 - the cache never breaks tracing
        log.debug("fxvene graph cache: could not store %s: %s", about.get("kind"), e)
        return None
    finally:
        if guards is not None:
            ep._guards_code = guards
    return _write(key, about, body)


def load(key, about, root, class_name="FxveneGraph"):
    """The cached graph for ``key`` with ``root``'s live tensors attached, or None: a
    ``torch.fx.GraphModule`` (named ``class_name``) for an entry in fxvene's own format, else an
    ``ExportedProgram``. A file that cannot be read as an entry of this key is deleted (with a debug
    note)."""
    if key is None or not enabled():
        return None
    p = _path(key)
    try:
        with open(p, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        discard(key, f"unreadable ({type(e).__name__})")
        return None
    try:
        if not isinstance(doc, dict) or doc.get("about") != json.loads(json.dumps(about, default=str)):
            raise ValueError("its key does not match")
        from safetensors.torch import load as st_load

        live = _live_tensors(root)
        consts = st_load(base64.b64decode(doc["constants"])) if doc.get("constants") else {}
        if "graph" in doc:
            from fxvene.graph import format as graph_format

            return graph_format.load(doc["graph"], consts, live, class_name)
        from torch._export.serde import serialize as serde

        raw = doc["program"]
        _check_expressions(raw)
        program = _to_dataclass(serde.ExportedProgram, json.loads(raw))
        program.guards_code = []  # nothing stored is ever run as Python code
        sig = program.graph_module.signature
        state, constants = {}, dict(consts)
        for spec in sig.input_specs:
            kind = spec.type
            if kind == "parameter":
                name = spec.parameter.parameter_name
                state[name] = live[name]
            elif kind == "buffer":
                name = spec.buffer.buffer_name
                if spec.buffer.persistent:
                    state[name] = live[name]
                else:
                    constants[name] = live[name]
            elif kind == "tensor_constant":
                name = spec.tensor_constant.tensor_constant_name
                if name not in constants:
                    constants[name] = live[name]
        with _quiet_torch_logs(), _memo_sympify(serde), _shared_tensor_metas(serde):
            ep = serde.ExportedProgramDeserializer().deserialize(program, state, constants, None)
        _check_targets(ep.graph_module)
        return ep
    except Exception as e:  # noqa: BLE001 - any failure: drop the entry, export again
        discard(key, f"{type(e).__name__}: {e}"[:200])
        return None


_CONVERTERS = {}


def _to_dataclass(cls, data):
    """JSON -> torch's export schema dataclasses: what ``serde._dict_to_dataclass`` does, with one
    converter built per schema type (torch inspects the type hints again for every value)."""
    return _converter(cls)(data)


def _converter(cls):
    conv = _CONVERTERS.get(cls)
    if conv is None:
        conv = _CONVERTERS[cls] = _make_converter(cls)
    return conv


def _make_converter(cls):
    import dataclasses
    import types
    import typing

    from torch._export.serde import schema
    from torch._export.serde.union import _Union

    if isinstance(cls, str):
        return _converter(getattr(schema, cls))
    if isinstance(cls, typing.ForwardRef):
        return _converter(getattr(schema, cls.__forward_arg__))
    origin = typing.get_origin(cls)
    if origin is typing.Annotated:
        return _converter(cls.__origin__)
    if origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(cls):
        args = [a for a in typing.get_args(cls) if a is not type(None)]
        return lambda d, _a=args[0]: None if d is None else _converter(_a)(d)
    if isinstance(cls, type) and issubclass(cls, _Union):
        hints = typing.get_type_hints(cls, globalns=vars(schema))

        def union(d):
            if not isinstance(d, dict) or len(d) != 1:
                raise ValueError(f"{cls.__name__}: expected a one-key object")
            ((name, value),) = d.items()
            return cls.create(**{name: _converter(hints[name])(value)})

        return union
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls, globalns=vars(schema))
        names = [f.name for f in dataclasses.fields(cls)]

        def record(d):
            return cls(**{n: _converter(hints[n])(d[n]) for n in names if n in d})

        return record
    if origin in (list, list):
        item = typing.get_args(cls)[0]
        return lambda d: [_converter(item)(x) for x in d] if d else d
    if origin in (dict, dict):
        item = typing.get_args(cls)[1]
        return lambda d: {k: _converter(item)(v) for k, v in d.items()}
    if cls is float:
        return float
    return lambda d: d


_EXPR = re.compile(r'"expr_str":\s*"((?:[^"\\]|\\.)*)"')
_TOKEN = re.compile(r"\s+|[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\\?'[a-z]+\d+\\?'|[-+*/(),=<>!%]")
_SYMPY_NAMES = None


def _sympy_names():
    global _SYMPY_NAMES
    if _SYMPY_NAMES is None:
        import sympy
        import torch.utils._sympy.functions as tf

        names = {n for n in dir(sympy) if not n.startswith("_") and isinstance(getattr(sympy, n), type)}
        names |= {n for n in dir(tf) if not n.startswith("_")}
        names |= {"True", "False", "oo", "zoo", "nan", "pi", "E", "Max", "Min", "Abs"}
        _SYMPY_NAMES = names
    return _SYMPY_NAMES


def _check_expressions(raw):
    """torch's deserialiser parses symbolic-shape expressions with ``sympy.sympify`` (Python eval):
    accept only expressions made of sympy constructors, numbers and symbol names, no attribute
    access, no other strings."""
    names = _sympy_names()
    for m in _EXPR.finditer(raw):
        expr = m.group(1)
        pos = 0
        while pos < len(expr):
            t = _TOKEN.match(expr, pos)
            if t is None:
                raise ValueError(f"unexpected character in a stored shape expression: {expr[pos : pos + 20]!r}")
            tok = t.group(0)
            if (tok[0].isalpha() or tok[0] == "_") and tok not in names:
                after = expr[t.end() :].lstrip()
                if tok.startswith("_") or not after.startswith("="):  # keyword names (positive=True) only
                    raise ValueError(f"unexpected name {tok!r} in a stored shape expression")
            pos = t.end()


def _check_targets(root):
    """Every call in the loaded program is an operator (aten / higher-order / symbolic arithmetic)."""
    import math
    import operator

    import torch

    ok_types = (torch._ops.OpOverload, torch._ops.OpOverloadPacket, torch._ops.HigherOrderOperator)
    for mod in root.modules():
        graph = getattr(mod, "graph", None)
        if graph is None:
            continue
        for n in graph.nodes:
            if n.op == "call_function":
                t = n.target
                if isinstance(t, ok_types):
                    continue
                name = getattr(t, "__name__", "")
                if getattr(operator, name, None) is t or getattr(math, name, None) is t:
                    continue
                if getattr(torch, name, None) is t and (name.startswith(("sym_", "_assert", "_check"))):
                    continue
                raise ValueError(f"unexpected call target {t!r} in a stored graph")
            elif n.op in ("call_method",):
                raise ValueError(f"unexpected call_method {n.target!r} in a stored graph")


def discard(key, why):
    """Delete a stale or corrupt entry (one debug-level note)."""
    log.debug("fxvene graph cache: discarding %s (%s); exporting again", key, why)
    try:
        _path(key).unlink()
    except OSError:
        pass


def has(key):
    return key is not None and _path(key).is_file()


def cli(action, out):
    """``fxvene cache info`` / ``fxvene cache clear``."""
    if action == "clear":
        n = clear_graph_cache()
        print(f"removed {n} file{'s' if n != 1 else ''} from {cache_dir()}", file=out)
        return 0
    info = cache_info()
    state = "on" if info["enabled"] else "off (FXVENE_CACHE=0)"
    n = info["entries"]
    print(
        f"graph cache: {info['dir']} ({state}): {n} graph{'s' if n != 1 else ''}, {info['bytes'] / 1e6:.1f} MB",
        file=out,
    )
    for g in info["graphs"]:
        print(f"  {g['kind']:<14} {g['model']:<60} {g['bytes'] / 1e6:6.2f} MB  {g['file']}", file=out)
    return 0
