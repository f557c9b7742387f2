"""``fxvene trace-facts``: ROME causal tracing over a JSONL file of facts, resumable.

    fxvene trace-facts FACTS.jsonl --model DIR --out RUN_DIR [--samples 10] [--window 10] ...
    torchrun --nproc_per_node=2 -m fxvene trace-facts FACTS.jsonl --model DIR --out RUN_DIR

The options are those of ``pv.causal_trace(model, "FACTS.jsonl", ...)`` (:func:`fxvene.facts_sweep.
trace_facts`). Each prompt's trace is written as soon as its batch finishes, as
``RUN_DIR/prompts/NNNNNN.safetensors`` (the probabilities) and ``NNNNNN.json`` (the rest and the
record), each through a temporary file and ``os.replace``; the JSON is written last and marks the
prompt done. Run the same command again after an interruption and it traces only the prompts not
done (the batches are cut the same way, so the finished run equals an uninterrupted one bit for
bit); ``RUN_DIR/run.json`` holds the options, and a rerun with other options or another facts file is
refused. At the end (rank 0): ``summary.json`` (ROME's averages by token class, the skipped and
malformed records), ``summary.safetensors`` and the figures ``aie.png`` and ``aie_lines.png``.

Nothing heavy is imported here at module level: ``fxvene --help`` stays instant.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

STREAMS = ("block_output", "mlp_activation", "attention_output")
_STALL = "FXVENE_FACTS_STALL_AFTER"  # tests: stall (a prompt in flight) after N prompts written


def add_parser(sub, builtins):
    sp = sub.add_parser(
        "trace-facts",
        help="ROME causal tracing over a JSONL file of facts (resumable; torchrun for several ranks)",
        description="Causal tracing (ROME) of every fact in FACTS.jsonl that the model gets right, written prompt "
        "by prompt to RUN_DIR (rerun the same command to resume), then ROME's average indirect effects "
        "by token class and layer (summary.json, aie.png, aie_lines.png). Several processes: "
        "torchrun --nproc_per_node=K -m fxvene trace-facts ...",
        epilog='FACTS.jsonl: one record per line, {"prompt": "The Space Needle is in downtown", "subject": '
        '"Space Needle", "target": " Seattle"} (or input_ids, subject_positions, target_token).',
    )
    sp.add_argument("facts", metavar="FACTS.jsonl", help="records: prompt, subject, target (one JSON object a line)")
    sp.add_argument(
        "--model",
        required=True,
        metavar="MODEL",
        help="local model directory (its tokenizer too) or built-in name: " + ", ".join(builtins),
    )
    sp.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (created; reused to resume)")
    sp.add_argument("--samples", type=int, default=10, help="noise samples per cell (default 10)")
    sp.add_argument(
        "--window", type=int, default=10, help="layers restored together for MLP and attention (default 10)"
    )
    sp.add_argument(
        "--noise",
        default=None,
        help="noise level: a number, or 'subjects' (ROME: 3 x the std of the subject tokens' embeddings); "
        "default 3 x the std of the embedding matrix",
    )
    sp.add_argument("--seed", type=int, default=1, help="noise seed (default 1)")
    sp.add_argument(
        "--streams", default=",".join(STREAMS), help=f"comma-separated components (default {','.join(STREAMS)})"
    )
    sp.add_argument("--layers", default=None, help="comma-separated layers (default all)")
    sp.add_argument(
        "--all", dest="all_facts", action="store_true", help="trace every fact, not only those the model gets right"
    )
    sp.add_argument(
        "--batch-prompts", type=int, default=None, help="prompts of one length per sweep (default: by memory budget)"
    )
    sp.add_argument("--max-rows", type=int, default=None, help="rows per chunk (default: by memory budget)")
    sp.add_argument("--memory-budget", default=None, help="e.g. 2GB (default: the model's size, at least 256 MiB)")
    sp.add_argument(
        "--row-groups",
        default="1",
        help="positions per row group of the causal prefix: an int (default 1, "
        "reproducible) or 'auto' (chosen by timings)",
    )
    sp.add_argument("--tracer", choices=("auto", "hf_fx", "export"), default="auto", help="tracing frontend")
    sp.add_argument(
        "--prefix", choices=("auto", "on", "off"), default="auto", help="causal-prefix reuse (default auto)"
    )
    sp.add_argument("--compile", action="store_true", help="torch.compile the graph segments")
    sp.add_argument("--no-plot", action="store_true", help="do not draw the figures")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="show library warnings and tracebacks"
    )
    sp.set_defaults(func=cmd_trace_facts)
    return sp


def _int_list(text, what):
    from fxvene.cli import CLIError

    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CLIError(f"{what} must be comma-separated integers, got {text!r}") from None


def check(args):
    """Argument errors before torch loads (CLIError)."""
    from fxvene.cli import CLIError

    if not os.path.isfile(args.facts):
        raise CLIError(f"FACTS.jsonl: no such file {args.facts!r}")
    parent = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(parent):
        raise CLIError(f"--out {args.out!r}: directory {parent!r} does not exist")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise CLIError(f"--out {args.out!r} is a file, expected a run directory")
    for opt in ("samples", "window", "batch_prompts", "max_rows"):
        v = getattr(args, opt)
        if v is not None and v < 1:
            raise CLIError(f"--{opt.replace('_', '-')} must be >= 1, got {v}")
    if args.noise is not None and args.noise != "subjects":
        try:
            float(args.noise)
        except ValueError:
            raise CLIError(f"--noise must be a number or 'subjects', got {args.noise!r}") from None
    if args.row_groups != "auto":
        try:
            if int(args.row_groups) < 1:
                raise ValueError
        except ValueError:
            raise CLIError(f"--row-groups must be a positive int or 'auto', got {args.row_groups!r}") from None
    if args.memory_budget is not None:
        from fxvene.facts import parse_bytes

        try:
            parse_bytes(args.memory_budget, "--memory-budget")
        except ValueError as e:
            raise CLIError(str(e)) from None
    if args.layers is not None:
        _int_list(args.layers, "--layers")


def _options(args):
    return {
        "samples": args.samples,
        "window": args.window,
        "noise": args.noise,
        "seed": args.seed,
        "streams": [s.strip() for s in args.streams.split(",") if s.strip()],
        "layers": None if args.layers is None else _int_list(args.layers, "--layers"),
        "only_correct": not args.all_facts,
        "batch_prompts": args.batch_prompts,
        "max_rows": args.max_rows,
        "memory_budget": args.memory_budget,
        "row_groups": args.row_groups,
        "tracer": args.tracer,
        "prefix": args.prefix,
        "compile": bool(args.compile),
    }


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _tokenizer(spec):
    """The model directory's tokenizer (the demo's for ``demo``); None where there is none."""
    path = spec
    if not os.path.isdir(spec):
        if spec != "demo":
            return None
        from fxvene.demo import demo_model_path

        path = demo_model_path()
    if not any(
        os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")
    ):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def _start_run(out_dir, run_info):
    """Write ``run.json`` or check it against this run's; returns an error message or None."""
    path = os.path.join(out_dir, "run.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        for key in ("facts_sha256", "model", "options"):
            if old.get(key) != run_info[key]:
                what = {"facts_sha256": "another facts file", "model": "another model", "options": "other options"}[key]
                return (
                    f"--out {out_dir!r} holds a run with {what} ({key}: {old.get(key)!r}, now {run_info[key]!r}); "
                    "use a new --out, or the same arguments to resume"
                )
        return None
    from fxvene.facts_results import write_json

    write_json(path, run_info)
    return None


def cmd_trace_facts(args, out):
    from fxvene.cli import CLIError, load_model

    check(args)
    opts = _options(args)
    import torch

    from fxvene import distributed
    from fxvene.facts import load_facts
    from fxvene.facts_results import FactsTraceResult, load_trace, save_trace, write_json
    from fxvene.facts_sweep import trace_facts

    ctx = distributed.context()
    rank = 0 if ctx is None else ctx.rank
    try:
        model = load_model(args.model)
        if ctx is not None and torch.cuda.is_available():
            model = model.to(distributed.device())
        tok = _tokenizer(args.model)
        vocab = model.get_output_embeddings().weight.shape[0]
        loaded = load_facts(args.facts, tok, vocab_size=vocab)
        facts, bad = loaded
        prompts = os.path.join(args.out, "prompts")
        os.makedirs(prompts, exist_ok=True)
        info = {
            "facts": os.path.abspath(args.facts),
            "facts_sha256": _sha256(args.facts),
            "model": args.model,
            "options": opts,
        }
        err = _start_run(args.out, info) if rank == 0 else None
        err = distributed.broadcast(err, ctx)
        if err:
            raise CLIError(err)

        def stem(f):
            return os.path.join(prompts, f"{f.index:06d}")

        done = {
            f.index for f in facts if os.path.isfile(stem(f) + ".json") and os.path.isfile(stem(f) + ".safetensors")
        }
        stall = int(os.environ.get(_STALL, "0") or 0)
        written = [0]

        def write(f, res):
            if stall and written[0] >= stall:
                from safetensors.torch import save_file

                save_file({"probs": res.probs}, stem(f) + ".safetensors")  # the prompt in flight: data, no record
                while True:
                    time.sleep(0.05)
            save_trace(stem(f), res, f, {"rank": rank})  # which process traced it (torchrun: its rank)
            written[0] += 1

        if rank == 0 and done:
            print(
                f"fxvene trace-facts: resuming {args.out}: {len(done)} prompt{'s' if len(done) != 1 else ''} "
                "already done",
                file=sys.stderr,
            )
        noise = opts["noise"] if opts["noise"] in (None, "subjects") else float(opts["noise"])
        res = trace_facts(
            model,
            loaded,
            tokenizer=tok,
            noise_level=noise,
            n_samples=opts["samples"],
            streams=opts["streams"],
            window=opts["window"],
            seed=opts["seed"],
            layers=opts["layers"],
            only_correct=opts["only_correct"],
            batch_prompts=opts["batch_prompts"],
            max_rows=opts["max_rows"],
            memory_budget=opts["memory_budget"],
            progress=False if args.no_progress else True,
            compile=opts["compile"],
            tracer=opts["tracer"],
            prefix={"auto": "auto", "on": True, "off": False}[opts["prefix"]],
            row_groups=None if opts["row_groups"] == "auto" else int(opts["row_groups"]),
            on_result=write,
            done=done,
        )
        distributed.barrier(ctx)
        if rank != 0:
            return 0
        skipped_idx = {s["index"] for s in res.skipped}
        traced = [f for f in facts if f.index not in skipped_idx]
        results = [load_trace(stem(f))[0] for f in traced]
        full = FactsTraceResult(results, traced, res.skipped, bad, res.options, memory=res.memory)
        _write_summary(args, full, write_json)
        print(full, file=out)
        print(
            f"{args.out}: {len(results)} prompt traces ({len(results) - len(done)} traced now, "
            f"{len(done)} from before) and the summary",
            file=out,
        )
        return 0
    finally:
        distributed.close(ctx)


def _write_summary(args, full, write_json):
    from safetensors.torch import save_file

    from fxvene.facts_results import _atomic

    summary = full.summary() if full.results else None
    data = {
        "n_records": len(full.results) + len(full.skipped) + len(full.malformed),
        "n_traced": len(full.results),
        "skipped": [{k: v for k, v in s.items()} for s in full.skipped],
        "malformed": [{"line": m.line, "reason": m.reason} for m in full.malformed],
        "options": {k: v for k, v in full.options.items()},
        "memory": full.memory,
        "summary": summary.to_dict() if summary is not None else None,
    }
    write_json(os.path.join(args.out, "summary.json"), data)
    if summary is None:
        return
    tensors = {
        "effect": summary.effect.contiguous(),
        "value": summary.value.contiguous(),
        "sem": summary.sem.contiguous(),
    }
    _atomic(os.path.join(args.out, "summary.safetensors"), lambda tmp: save_file(tensors, tmp))
    if args.no_plot:
        return
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        print("fxvene trace-facts: matplotlib is not installed; no figures (pip install matplotlib)", file=sys.stderr)
        return
    for name, draw in (("aie.png", full.plot), ("aie_lines.png", full.plot_lines)):
        path = os.path.join(args.out, name)
        tmp = os.path.join(args.out, f".{name}.tmp-{os.getpid()}.png")  # savefig reads the format off the name
        draw(path=tmp)
        os.replace(tmp, path)
