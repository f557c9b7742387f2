"""The ``fxvene`` command: component maps, graph diffs and tracing reports.

    fxvene components MODEL [--layer N] [--component NAME ...] [--tracer T] [--json]
    fxvene components --list        (the model classes fxvene has component maps for; no torch)
    fxvene diff MODEL --config CONFIG.json [--graph base|source|all] [--dot out.dot] [--render svg]
    fxvene trace MODEL [--tracer T]

MODEL is a local model directory (loaded with ``AutoModelForCausalLM.from_pretrained``,
offline) or a built-in name: ``gpt2-tiny``, ``llama-tiny``, ``gpt2-small-shape`` (GPT-2
small's shape, random weights) or ``demo`` (the model shipped in ``fxvene/zoo/demo/model``).

Errors print one line on stderr (``-v`` shows the traceback) and exit with status 1;
usage errors exit with status 2. Arguments are checked before torch, transformers or the model
load (``check_args``: the model path, layer and component names, the config's JSON), so
``--help`` and most mistakes answer at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import textwrap
import time
import warnings

from fxvene.cli.common import (  # noqa: F401  (the built-in models are part of this module's interface)
    BUILTIN_SHAPES,
    BUILTINS,
    TRACERS,
    CLIError,
    builtin_config,
    builtin_model,
    load_model,
    load_model_dir,
)

# ---------------------------------------------------------------------------------- checks
# Everything here reads JSON and the component maps in fxvene.models only (no torch, no
# transformers): argument errors are reported before anything heavy loads.


def _read_config_json(path, what):
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
    except FileNotFoundError:
        raise CLIError(f"{what} has no config.json") from None
    except (OSError, ValueError) as e:
        raise CLIError(f"{what}: cannot read {os.path.join(path, 'config.json')!r} ({e})") from None
    if not isinstance(cfg, dict):
        raise CLIError(f"{what}: {os.path.join(path, 'config.json')!r} is not a JSON object")
    return cfg


def model_shape(spec):
    """``(family, n_layers)`` of a model argument, from its config.json or the built-in table,
    without loading it (either may be None when unknown). Raises CLIError for a model that
    does not exist."""
    from fxvene.models import families

    if spec in BUILTINS and not os.path.isdir(spec):
        if spec == "demo":
            from fxvene.zoo.demo import demo_model_path

            path = demo_model_path()
            if not os.path.isfile(os.path.join(path, "config.json")):
                raise CLIError(f"built-in model 'demo': the demo model is not installed (no config.json in {path})")
            cfg = _read_config_json(path, "built-in model 'demo'")
            archs = cfg.get("architectures") or []
        else:
            arch, n = BUILTIN_SHAPES[spec]
            archs, cfg = [arch], None
    elif os.path.isdir(spec):
        cfg = _read_config_json(spec, f"model directory {spec!r}")
        archs = cfg.get("architectures") or []
    elif os.sep in spec or spec.startswith(".") or (os.altsep and os.altsep in spec):
        raise CLIError(f"model directory {spec!r} does not exist")
    else:
        raise CLIError(f"model {spec!r} is neither a local model directory nor a built-in name ({', '.join(BUILTINS)})")
    fam = next((f for f in families() for a in archs if a in f.prefixes), None)
    if fam is None:
        return None, None
    if cfg is None:
        return fam, n
    n = cfg.get(fam.n_layers)
    return fam, n if isinstance(n, int) and not isinstance(n, bool) else None


def _check_layer(layer, n_layers, model, what):
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise CLIError(f"{what} must be an integer, got {layer!r}")
    if layer < 0 or (n_layers is not None and layer >= n_layers):
        known = f" with {n_layers} layers" if n_layers is not None else ""
        raise CLIError(f"{what}: layer {layer} is out of range for {model}{known}")


def _check_component(name, fam, what):
    if not isinstance(name, str):
        raise CLIError(f"{what} must be a string, got {name!r}")
    # pyvene's string components ("transformer.h[0].mlp.output") are resolved on the model
    if fam is not None and "." not in name and name not in fam.components:
        from fxvene.graph.errors import known  # a leaf module: no torch

        raise CLIError(f"{what}: unknown component {name!r} for the {fam.name} family; {known(name, fam.components)}")


def read_intervention_config(path):
    """``(data, representations)`` of a ``--config`` JSON file, its layout checked (no torch)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise CLIError(f"--config: no such file {path!r}") from None
    except IsADirectoryError:
        raise CLIError(f"--config: {path!r} is a directory, expected a JSON file") from None
    except json.JSONDecodeError as e:
        raise CLIError(f"--config: {path!r} is not valid JSON ({e})") from None
    if isinstance(data, list):
        data = {"representations": data}
    if not isinstance(data, dict):
        raise CLIError("--config: expected a JSON object with 'representations' (or a list of representations)")
    unknown = sorted(set(data) - {"representations", "mode", "intervention_types"})
    if unknown:
        raise CLIError(f"--config: unknown keys {unknown}; expected representations, mode, intervention_types")
    reps = data.get("representations")
    if isinstance(reps, dict):
        reps = [reps]
    if not isinstance(reps, list) or not reps:
        raise CLIError("--config: 'representations' must be a non-empty list of objects")
    return data, reps


def precheck_config(path, fam, n_layers, model):
    """The parts of a ``--config`` file checkable without torch: JSON, its layout, component
    names and layers (field names and intervention types are checked by ``load_config``)."""
    data, reps = read_intervention_config(path)
    for i, r in enumerate(reps):
        if not isinstance(r, dict):
            raise CLIError(f"--config: representations[{i}] must be an object, got {type(r).__name__}")
        if "component" in r:
            _check_component(r["component"], fam, f"--config: representations[{i}].component")
        if "layer" in r:
            _check_layer(r["layer"], n_layers, model, f"--config: representations[{i}].layer")
    return data


def check_args(args):
    """Every check that needs neither torch nor the model; raises CLIError."""
    if args.command == "trace-facts":
        from fxvene.cli.trace_facts import check

        check(args)
    fam, n_layers = model_shape(args.model)
    if getattr(args, "layer", None) is not None:
        _check_layer(args.layer, n_layers, args.model, "--layer")
    for c in getattr(args, "component", None) or ():
        _check_component(c, fam, "--component")
    if args.command == "diff":
        if args.render and not args.dot:
            raise CLIError("--render needs --dot PATH")
        if args.render and shutil.which("dot") is None:
            raise CLIError("--render: Graphviz's 'dot' program is not installed (the --dot file itself needs nothing)")
        for opt in ("context", "neighbourhood", "cluster_depth", "group"):
            v = getattr(args, opt)
            if v is not None and v < 0:
                raise CLIError(f"--{opt.replace('_', '-')} must be >= 0, got {v}")
        precheck_config(args.config, fam, n_layers, args.model)


# ---------------------------------------------------------------------------------- configs


def resolve_intervention_type(name, where="intervention_type"):
    """An intervention class from a JSON string: a bare class name or a pyvene/fxvene type string."""
    from fxvene.api.basic_utils import get_type_from_string

    if not isinstance(name, str):
        raise CLIError(f"{where} must be a string naming an intervention class, got {name!r}")
    s = name.strip()
    try:
        if "." in s or s.startswith("<class"):
            return get_type_from_string(s)
        return get_type_from_string(f"fxvene.interventions.{s}")
    except ValueError:
        from fxvene.api.basic_utils import ALLOWED_TYPE_NAMES
        from fxvene.graph.errors import known

        raise CLIError(f"{where}: unknown intervention type {name!r}; {known(s, sorted(ALLOWED_TYPE_NAMES))}") from None


def load_config(path):
    """An ``IntervenableConfig`` from pyvene-style JSON.

    ``{"representations": [{"layer": 3, "component": "block_output", "intervention_type":
    "VanillaIntervention"}, ...], "mode": "parallel", "intervention_types": ...}``; a bare list
    is taken as the representations.
    """
    from fxvene.api.configuration import IntervenableConfig, RepresentationConfig

    data, reps = read_intervention_config(path)
    fields = set(RepresentationConfig._fields)
    out = []
    for i, r in enumerate(reps):
        if not isinstance(r, dict):
            raise CLIError(f"--config: representations[{i}] must be an object, got {type(r).__name__}")
        bad = sorted(set(r) - fields)
        if bad:
            raise CLIError(f"--config: representations[{i}] has unknown keys {bad}")
        if "intervention" in r:
            raise CLIError(
                f"--config: representations[{i}]: use 'intervention_type' (a class name), not 'intervention'"
            )
        r = dict(r)
        if r.get("intervention_type") is not None:
            r["intervention_type"] = resolve_intervention_type(
                r["intervention_type"], f"representations[{i}].intervention_type"
            )
        out.append(RepresentationConfig(**r))
    kwargs = {}
    if "mode" in data:
        kwargs["mode"] = data["mode"]
    types_ = data.get("intervention_types")
    if types_ is not None:
        if isinstance(types_, list):
            kwargs["intervention_types"] = [resolve_intervention_type(t, "intervention_types") for t in types_]
        else:
            kwargs["intervention_types"] = resolve_intervention_type(types_, "intervention_types")
    return IntervenableConfig(representations=out, **kwargs)


# ---------------------------------------------------------------------------------- commands


def list_supported(out):
    """``fxvene components --list``: the model classes with a component map, by family (read from
    the specs in fxvene.models; nothing is imported beyond them)."""
    from fxvene.models import families, supported_model_types

    fams = sorted(families(), key=lambda f: f.name)
    width = max(len(f.name) for f in fams)
    print(f"{'family':<{width}}  model classes ({len(supported_model_types())})", file=out)
    for fam in fams:
        lines = textwrap.wrap(", ".join(fam.prefixes), 100 - width - 2, break_on_hyphens=False)
        for j, line in enumerate(lines):
            print(f"{fam.name if j == 0 else '':<{width}}  {line}", file=out)
    print(
        "Other transformers models: fxvene derives a component map where it can, or use string components "
        "such as 'model.layers[0].mlp.output'.",
        file=out,
    )
    return 0


def cmd_components(args, out):
    from fxvene.graph.tracing import trace
    from fxvene.inspection.tables import component_table, default_signature, describe, format_table

    model = load_model(args.model)
    rows = component_table(model, tracer=args.tracer, layer=args.layer, components=args.component or None)
    if args.json:
        print(json.dumps([_jsonable(r.as_dict()) for r in rows], indent=1), file=out)
        return 0
    traced = trace(model, default_signature(model), tracer=args.tracer)  # Whisper: input_features
    print(describe(model, traced) + " | shapes on an example input of batch 2, sequence 8", file=out)
    from fxvene.models import derive, family_for

    for line in derive.describe_derived(family_for(model)[0]):  # a derived map says so
        print(line, file=out)
    print(format_table(rows), file=out)
    return 0


def _jsonable(d):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def cmd_trace(args, out):
    from fxvene.graph import tracing
    from fxvene.graph.tracing import trace
    from fxvene.models import family_for

    model = load_model(args.model)
    sig = ("input_ids", "attention_mask")
    cached = (args.tracer, sig) in tracing._CACHE.get(model, {})
    t0 = time.perf_counter()
    traced = trace(model, sig, tracer=args.tracer)
    total = time.perf_counter() - t0
    ops = {}
    for n in traced.gm.graph.nodes:
        ops[n.op] = ops.get(n.op, 0) + 1
    fam, _ = family_for(model)
    n_params = sum(p.numel() for p in model.parameters())
    layers = f", {getattr(model.config, fam.n_layers)} layers" if fam is not None else ""
    print(f"model:      {type(model).__name__} ({args.model}){layers}, {n_params / 1e6:.2f}M parameters", file=out)
    print(f"family:     {fam.name if fam is not None else '(none: use string components)'}", file=out)
    print(f"frontend:   {traced.frontend} (tracer={args.tracer})", file=out)
    print(
        f"nodes:      {len(traced.gm.graph.nodes)} (" + ", ".join(f"{k} {v}" for k, v in sorted(ops.items())) + ")",
        file=out,
    )
    print(f"inputs:     {', '.join(traced.input_names)} -> outputs: {', '.join(traced.output_keys)}", file=out)
    if cached:
        print(
            f"trace time: {traced.trace_seconds:.2f} s in the frontend (measured when first traced in this "
            "process; this call reused the cached graph)",
            file=out,
        )
    else:
        print(
            f"trace time: {traced.trace_seconds:.2f} s in the frontend (trace + output check), "
            f"{total:.2f} s in all (with the reference forward)",
            file=out,
        )
    return 0


def cmd_cache(args, out):
    from fxvene.graph.cache import cli

    return cli(args.action, out)


def _dot_paths(base, names):
    stem, ext = os.path.splitext(base)
    ext = ext or ".dot"
    return [base if i == 0 else f"{stem}.{nm}{ext}" for i, nm in enumerate(names)]


def cmd_diff(args, out):
    from fxvene.api.intervenable import IntervenableModel
    from fxvene.api.views import intervenable_diff, sites
    from fxvene.inspection.diff import render_dot
    from fxvene.inspection.tables import describe, format_table

    config = load_config(args.config)  # field names, intervention types (check_args did the rest)
    model = load_model(args.model)
    iv = IntervenableModel(config, model, tracer=args.tracer)
    traced = iv._traced(("input_ids", "attention_mask"))
    print(describe(model, traced), file=out)
    print(format_table(sites(iv)), file=out)

    plans = []
    if args.graph in ("base", "all"):
        plans.append(("base", 0, "base"))
    if args.graph in ("source", "all"):
        groups = list(iv._groups)
        if args.group is not None:
            if not 0 <= args.group < len(groups):
                raise CLIError(f"--group: {args.group} is out of range for {len(groups)} source groups")
            picked = [args.group]
        else:
            picked = range(len(groups))
        for g in picked:
            try:
                iv.rewritten_graph("source", g)
            except ValueError:
                if args.graph == "source" and args.group is not None:
                    raise
                continue  # a group without a source run (source-less or Collect interventions)
            plans.append(("source", g, f"source{g}"))
    if not plans:
        raise CLIError("--graph source: no intervention reads a source, so there is no source run to show")
    dot_files = _dot_paths(args.dot, [p[2] for p in plans]) if args.dot else []
    neighbourhood = None if args.whole_graph else args.neighbourhood
    for i, (plan, g, _) in enumerate(plans):
        d = intervenable_diff(iv, plan=plan, group=g)
        print("", file=out)
        print("======== " + d.summary(), file=out)
        print("", file=out)
        if args.code:
            print(d.code_diff(context=args.context), file=out)
        else:
            print(d.text(context=args.context, max_run=None if args.full else 20), file=out)
        if dot_files:
            d.write_dot(
                dot_files[i],
                neighbourhood=neighbourhood,
                cluster_depth=args.cluster_depth,
                collapse_removed=not args.expand_removed,
            )
            msg = f"wrote {dot_files[i]}"
            if args.render:
                img = os.path.splitext(dot_files[i])[0] + "." + args.render
                with open(dot_files[i], encoding="utf-8") as f:
                    render_dot(f.read(), img, args.render)
                msg += f" and {img}"
            print(msg, file=out)
    return 0


# ---------------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser():
    models_help = "; ".join(f"{k}: {v}" for k, v in BUILTINS.items())
    p = _Parser(
        prog="fxvene",
        description="Inspect what fxvene changes in a model: component maps, graph diffs, tracing.",
        epilog=f"MODEL: a local model directory or a built-in name ({models_help}).",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show library warnings and tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def common(sp, optional=False):
        sp.add_argument(
            "model",
            metavar="MODEL",
            nargs="?" if optional else None,
            help="local model directory or built-in name: " + ", ".join(BUILTINS),
        )
        sp.add_argument("--tracer", choices=TRACERS, default="auto", help="tracing frontend (default: auto)")
        sp.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show library warnings and tracebacks",
        )

    sp = sub.add_parser(
        "components",
        help="every component at every layer: node, module, shape, dtype",
        description="List every component of the model's family at every layer (or one) with the "
        "fx node it resolves to, its module path, port, shape and dtype.",
    )
    common(sp, optional=True)
    sp.add_argument(
        "--list", action="store_true", help="list the model classes fxvene has component maps for (no MODEL)"
    )
    sp.add_argument("--layer", type=int, default=None, help="only this layer")
    sp.add_argument("--component", action="append", metavar="NAME", help="only this component (repeatable)")
    sp.add_argument("--json", action="store_true", help="print the rows as JSON")
    sp.set_defaults(func=cmd_components)

    sp = sub.add_parser(
        "diff",
        help="graph diff between the traced model and the rewritten graphs of a config",
        description="Show the sites of a pyvene-style config and the graph diff between the traced "
        "model and the rewritten graphs (the intervened base forward and the truncated "
        "source runs).",
        epilog='CONFIG.json: {"representations": [{"layer": 3, "component": "block_output", '
        '"intervention_type": "VanillaIntervention"}], "mode": "parallel"}',
    )
    common(sp)
    sp.add_argument("--config", required=True, metavar="CONFIG.json", help="pyvene-style intervenable config (JSON)")
    sp.add_argument(
        "--graph",
        choices=("base", "source", "all"),
        default="all",
        help="which rewritten graph(s): the intervened base forward, the source runs, or all (default)",
    )
    sp.add_argument("--group", type=int, default=None, help="only this source group (with --graph source/all)")
    sp.add_argument("--context", type=int, default=3, help="unchanged lines around each change (default 3)")
    sp.add_argument("--full", action="store_true", help="do not shorten long runs of added/removed lines")
    sp.add_argument("--code", action="store_true", help="diff the generated Python code (gm.code) instead")
    sp.add_argument(
        "--dot", metavar="PATH", help="write Graphviz DOT (one file per graph: PATH, PATH-stem.sourceG.dot)"
    )
    sp.add_argument("--render", metavar="FMT", help="also render each DOT file with Graphviz 'dot' (svg, png, pdf)")
    sp.add_argument(
        "--neighbourhood", type=int, default=2, help="DOT: keep nodes within N hops of a change (default 2)"
    )
    sp.add_argument("--whole-graph", action="store_true", help="DOT: keep every node")
    sp.add_argument(
        "--expand-removed",
        action="store_true",
        help="DOT: draw every removed node (default: one node per module for removed nodes)",
    )
    sp.add_argument("--cluster-depth", type=int, default=3, help="DOT: module levels grouped as clusters (default 3)")
    sp.set_defaults(func=cmd_diff)

    sp = sub.add_parser(
        "trace",
        help="trace the model: node count, frontend, time to trace",
        description="Trace the model once and report the frontend, node counts and time to trace.",
    )
    common(sp)
    sp.set_defaults(func=cmd_trace)

    sp = sub.add_parser(
        "cache",
        help="the on-disk graph cache: info (where, what) or clear",
        description="Exported graphs are cached on disk ($FXVENE_CACHE_DIR, default ~/.cache/fxvene; "
        "FXVENE_CACHE=0 turns it off). 'info' lists them, 'clear' deletes them.",
    )
    sp.add_argument("action", choices=("info", "clear"))
    sp.set_defaults(func=cmd_cache)

    from fxvene.cli.trace_facts import add_parser as add_trace_facts  # light module: no torch at import

    add_trace_facts(sub, BUILTINS)
    return p


_NOISY_LOGGERS = ("torch.fx", "torch.export", "torch._export", "torch._dynamo", "torch.fx.experimental.symbolic_shapes")


@contextlib.contextmanager
def _quiet(enabled):
    if not enabled:
        yield
        return
    from transformers.utils import logging as hf_logging

    old_hf = hf_logging.get_verbosity()
    old_levels = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    hf_logging.set_verbosity_error()
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(old_hf)
        for name, lvl in old_levels.items():
            logging.getLogger(name).setLevel(lvl)


def _one_line(e):
    msg = str(e).strip().splitlines()
    msg = msg[0] if msg else type(e).__name__
    if isinstance(e, CLIError):
        return msg
    return f"{type(e).__name__}: {msg}"


def main(argv=None):
    """Entry point of the ``fxvene`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("missing COMMAND (components, diff or trace)")
    prog = f"fxvene {args.command}"
    if args.command == "components" and (args.list or args.model is None):
        if args.model is not None or not args.list:
            sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            sub.choices["components"].error("give a MODEL, or --list (without a MODEL) for the supported classes")
        return list_supported(sys.stdout)  # data only: no torch, no transformers
    try:
        if args.command != "cache":
            check_args(args)  # before torch, transformers and the model load
        with _quiet(not args.verbose):
            return args.func(args, sys.stdout)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every failure is one line unless --verbose
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
