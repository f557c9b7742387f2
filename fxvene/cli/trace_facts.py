"""``fxvene trace-facts``: ROME causal tracing over a JSONL file of facts, resumable.

    fxvene trace-facts FACTS.jsonl --model DIR --out RUN_DIR [--samples 10] [--window 10] [--threads N] ...
    torchrun --nproc_per_node=2 -m fxvene trace-facts FACTS.jsonl --model DIR --out RUN_DIR

The options are those of ``pv.causal_trace(model, "FACTS.jsonl", ...)`` (``fxvene.sweeps.datasets.
trace_facts``). Each prompt's trace is written as soon as its batch finishes, as
``RUN_DIR/prompts/NNNNNN.safetensors`` (the probabilities) and ``NNNNNN.json`` (the rest, the record and
the session that traced it), each through a temporary file and ``os.replace``; the JSON is written last
and marks the prompt done. Run the same command again after an interruption and it traces only the
prompts not done; the batches are cut from the facts alone, so a resumed batch is the batch an
uninterrupted run computes.

Bit for bit: the finished run equals an uninterrupted one bit for bit when every session runs with
the same **settings**: torch's thread count (``--threads``; the CPU's matrix-product kernel, and
so its order of summation, can depend on it), the CPU's kernel set or the GPU, the versions of torch,
transformers, fxvene and Python, and the options that only decide how the work is cut (batch and
chunk sizes, memory budget, row groups, tracer, prefix reuse, compile). ``RUN_DIR/run.json`` records
the options and the first session's settings (and each resume's). Pass ``--threads`` to every session
where the default could differ between them: torchrun starts its ranks with ``OMP_NUM_THREADS=1``, a
plain process uses every core. ``--row-groups auto`` is chosen by timings in each process: such runs
agree only to rounding, whatever the settings. On a GPU the thread count plays no part.

A rerun with another facts file, another model or other options that decide *what* is computed
(samples, window, noise, seed, streams, layers, --all) is refused: its prompts would not belong to
the same experiment. A resume under other settings or other *how* options continues, with a one-line
warning on stderr naming what differs (old -> new), and the prompts it traces carry its session
number: every prompt is still traced whole, in one process, under one setting, so each file is a
valid trace; what is lost is only the bit-for-bit equality of the whole with an uninterrupted run
(the same arithmetic in another order: float rounding, or more where a new library version changed
the computation; the warning says which). Refusing would leave only the choice of discarding the
finished prompts, which a user can still make (a new --out) after reading the warning; a resume
with a smaller --batch-prompts or --memory-budget after running out of memory is the common case.

At the end (rank 0): ``summary.json`` (ROME's averages by token class, the skipped and malformed
records), ``summary.safetensors`` and the figures ``aie.png`` and ``aie_lines.png``, all in the AIE
definition of ``--aie`` (``rome``: ROME's, the mean restored p of a class minus the mean corrupted p
of all prompts; ``per_prompt``: the mean of each prompt's own difference), which each of them names
and ``run.json`` records. A resume keeps the run's definition (a run.json without one, from an older
fxvene, was ``per_prompt``); another ``--aie`` on a resume is refused like the other *what* options.

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
        help="noise: a number (Gaussian std), ROME's s<k> (k x the std of the subjects' embeddings, each "
        "subject tokenized alone), m (a Gaussian fitted to the prompts' embeddings), t<d> (Student-t, d "
        "degrees), u<x> (uniform, half-width x), or 'subjects' (3 x the std of the prompts' subject tokens); "
        "default 3 x the std of the embedding matrix",
    )
    sp.add_argument("--replace", action="store_true", help="replace the subject's embeddings by the noise (not add it)")
    sp.add_argument(
        "--aie",
        choices=("rome", "per_prompt"),
        default=None,
        help="the AIE of the summary and figures: rome (mean restored - mean corrupted over all prompts) or "
        "per_prompt (mean of each prompt's restored - corrupted); default rome, or the resumed run's",
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
    sp.add_argument(
        "--pipeline",
        type=int,
        default=1,
        metavar="K",
        help="split the model into K pipeline stages over the torchrun processes (a model directory; "
        "W processes: W/K replicas of K stages)",
    )
    sp.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch's CPU thread count for this run (default: torch's own, from OMP_NUM_THREADS or the cores); "
        "a resume matches the first run bit for bit only with the same count",
    )
    sp.add_argument("--no-plot", action="store_true", help="do not draw the figures")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="show library warnings and tracebacks"
    )
    sp.set_defaults(func=cmd_trace_facts)
    return sp


def _int_list(text, what):
    from fxvene.cli.common import CLIError

    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CLIError(f"{what} must be comma-separated integers, got {text!r}") from None


def check(args):
    """Argument errors before torch loads (CLIError)."""
    from fxvene.cli.common import CLIError

    if not os.path.isfile(args.facts):
        raise CLIError(f"FACTS.jsonl: no such file {args.facts!r}")
    parent = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(parent):
        raise CLIError(f"--out {args.out!r}: directory {parent!r} does not exist")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise CLIError(f"--out {args.out!r} is a file, expected a run directory")
    if args.pipeline > 1 and not os.path.isdir(args.model):
        raise CLIError(f"--pipeline {args.pipeline}: --model must be a model directory, got {args.model!r}")
    if args.pipeline > 1 and args.compile:
        raise CLIError("--pipeline runs eager graph segments: drop --compile")
    for opt in ("samples", "window", "batch_prompts", "max_rows", "threads", "pipeline"):
        v = getattr(args, opt)
        if v is not None and v < 1:
            raise CLIError(f"--{opt.replace('_', '-')} must be >= 1, got {v}")
    if args.noise is not None and not _noise_ok(args.noise):
        raise CLIError(f"--noise must be a number, s<k>, m, t<d> (d > 2), u<x> or 'subjects', got {args.noise!r}")
    if args.row_groups != "auto":
        try:
            if int(args.row_groups) < 1:
                raise ValueError
        except ValueError:
            raise CLIError(f"--row-groups must be a positive int or 'auto', got {args.row_groups!r}") from None
    if args.memory_budget is not None:
        from fxvene.sweeps.facts import parse_bytes

        try:
            parse_bytes(args.memory_budget, "--memory-budget")
        except ValueError as e:
            raise CLIError(str(e)) from None
    if args.layers is not None:
        _int_list(args.layers, "--layers")


def _noise_ok(text):
    """Whether ``text`` is a --noise spelling (checked here without torch; the sweep checks it again)."""
    import math

    def number(t):
        try:
            return float(t) if math.isfinite(float(t)) and float(t) >= 0 else None
        except ValueError:
            return None

    if text in ("subjects", "m", "s") or number(text) is not None:
        return True
    x = number(text[1:]) if text[:1] in ("s", "t", "u") else None
    return x is not None and (text[0] != "t" or x > 2)


def _options(args):
    return {
        "samples": args.samples,
        "window": args.window,
        "noise": args.noise,
        "replace": bool(args.replace),
        "aie": args.aie,
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
        from fxvene.zoo.demo import demo_model_path

        path = demo_model_path()
    if not any(
        os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")
    ):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


# options that decide what is computed (another value: another experiment, refused) and those that only
# decide how the work is cut and run (another value: the same numbers to float rounding, a warning)
WHAT = ("samples", "window", "noise", "replace", "seed", "streams", "layers", "only_correct", "aie")
OLDER = {"replace": False, "aie": "per_prompt"}  # what a run.json of an older fxvene, without the key, ran
HOW = ("batch_prompts", "max_rows", "memory_budget", "row_groups", "tracer", "prefix", "compile")
VERSIONS = ("torch", "transformers", "fxvene", "python")


def settings(model):
    """What besides the options decides a trace's bits: torch's thread count, the device (the CPU's
    kernel set, e.g. ``cpu AVX2``, or the GPU's name) and the library versions."""
    import platform

    import torch
    import transformers

    from fxvene._version import __version__

    dev = next(model.parameters()).device
    if dev.type == "cuda":
        device = f"cuda {torch.cuda.get_device_name(dev)}"
    else:
        cap = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
        device = f"{dev.type} {cap()}" if cap is not None and dev.type == "cpu" else dev.type
    return {
        "threads": torch.get_num_threads(),
        "device": device,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "fxvene": __version__,
        "python": platform.python_version(),
    }


def _changes(old, new, keys):
    """``["key old -> new", ...]`` for the keys whose values differ."""
    return [f"{k} {old.get(k)} -> {new.get(k)}" for k in keys if old.get(k) != new.get(k)]


def _start_run(out_dir, run_info, n_done):
    """Write ``run.json``, or check it against this session's: ``(error, warning, session)``.

    ``error`` (refuse): another facts file, model or *what* option. ``warning`` (continue): other
    settings or *how* options than the first session's, when prompts are already done (the prompts
    traced now may then differ from an uninterrupted run's; see the module's docstring). ``session``:
    0 for the first run, k for the k-th resume (recorded in run.json's ``resumes`` and in each prompt
    traced)."""
    from fxvene.sweeps.facts_results import write_json

    path = os.path.join(out_dir, "run.json")
    if not os.path.isfile(path):
        write_json(path, dict(run_info, resumes=[]))
        return None, None, 0
    with open(path, encoding="utf-8") as f:
        old = json.load(f)
    opts, new_opts = {**OLDER, **(old.get("options") or {})}, {**OLDER, **run_info["options"]}
    refusal = None
    if old.get("facts_sha256") != run_info["facts_sha256"]:
        sha = str(old.get("facts_sha256"))[:12], run_info["facts_sha256"][:12]
        refusal = f"another facts file (sha256 {sha[0]}..., now {sha[1]}...)", "the same facts file"
    elif old.get("model") != run_info["model"]:
        refusal = f"another model ({old.get('model')!r}, now {run_info['model']!r})", "the same --model"
    elif _changes(opts, new_opts, WHAT):
        refusal = f"other options ({', '.join(_changes(opts, new_opts, WHAT))})", "the same arguments"
    if refusal is not None:
        return f"--out {out_dir!r} holds a run with {refusal[0]}; use a new --out, or {refusal[1]} to resume", None, 0
    if n_done == 0:  # nothing traced yet: this session starts the run afresh, under its own settings
        write_json(path, dict(run_info, resumes=[]))
        return None, None, 0
    resumes = list(old.get("resumes") or [])
    session = len(resumes) + 1
    resumes.append(dict(session=session, prompts_done_before=n_done, settings=run_info["settings"], options=new_opts))
    write_json(path, dict(old, resumes=resumes))
    first, now = old.get("settings"), run_info["settings"]
    if first is None:
        note = "run.json has no settings of its first run (an older fxvene): a bit-for-bit match is not checked"
        return None, f"fxvene trace-facts: warning: {note}", session
    keys = (["threads"] if str(now["device"]).startswith("cpu") else []) + ["device", *VERSIONS]  # GPU: not threads
    diff = _changes(first, now, keys) + _changes(opts, new_opts, HOW)
    if not diff:
        return None, None, session
    if any(first.get(k) != now.get(k) for k in VERSIONS):
        how = "(rounding, or more if a version changed the code)"
    else:
        how = "in the last bits (float rounding)"
    hint = f"; --threads {first.get('threads')} matches it" if any(d.startswith("threads ") for d in diff) else ""

    def line(shown):
        return (
            f"fxvene trace-facts: warning: settings differ from the first run's ({', '.join(shown)}): "
            f"the prompts traced now may differ from an uninterrupted run's {how}{hint}"
        )

    def first_n(n):  # one line of under 300 characters: the rest is in run.json
        return diff if n == len(diff) else diff[:n] + [f"{len(diff) - n} more in run.json"]

    n = len(diff)
    while n > 1 and len(line(first_n(n))) >= 300:
        n -= 1
    warning = line(first_n(n))
    return None, warning, session


def run_definition(out_dir, asked):
    """The AIE definition of a run: ``asked`` (--aie) where given, else the one ``RUN_DIR/run.json``
    records (an older run.json without it: ``"per_prompt"``), else ``"rome"``."""
    if asked is not None:
        return asked
    path = os.path.join(out_dir, "run.json")
    if not os.path.isfile(path):
        return "rome"
    try:
        with open(path, encoding="utf-8") as f:
            return (json.load(f).get("options") or {}).get("aie") or OLDER["aie"]
    except (OSError, ValueError):
        return "rome"


def cmd_trace_facts(args, out):
    check(args)
    opts = _options(args)
    import torch

    from fxvene.sweeps import distributed

    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)  # before the model is built: every step of the run uses it
    try:
        ctx = distributed.context()
    except BaseException:
        torch.set_num_threads(threads)
        raise
    try:
        return _run(args, out, opts, ctx)
    finally:
        distributed.close(ctx)
        torch.set_num_threads(threads)  # called in-process (tests, notebooks): the caller's count again


def _run(args, out, opts, ctx):
    import torch

    from fxvene.cli.common import CLIError, load_model
    from fxvene.sweeps import distributed
    from fxvene.sweeps.datasets import trace_facts
    from fxvene.sweeps.facts import load_facts
    from fxvene.sweeps.facts_results import FactsTraceResult, load_trace, save_trace, write_json

    rank = 0 if ctx is None else ctx.rank
    k = args.pipeline
    if k > 1:
        from fxvene.sweeps.pipeline import pipeline_model

        if ctx is None or ctx.world % k:
            world = 1 if ctx is None else ctx.world
            raise CLIError(f"--pipeline {k}: run under torchrun with a multiple of {k} processes, got {world}")
        model = pipeline_model(args.model, k)  # this rank's stage; sweeps run each segment on its stage
    else:
        model = load_model(args.model)
    if ctx is not None and torch.cuda.is_available() and k == 1:
        model = model.to(distributed.device())
    tok = _tokenizer(args.model)
    vocab = model.get_output_embeddings().weight.shape[0]
    loaded = load_facts(args.facts, tok, vocab_size=vocab)
    facts, bad = loaded
    prompts = os.path.join(args.out, "prompts")
    os.makedirs(prompts, exist_ok=True)

    def stem(f):
        return os.path.join(prompts, f"{f.index:06d}")

    done = {f.index for f in facts if os.path.isfile(stem(f) + ".json") and os.path.isfile(stem(f) + ".safetensors")}
    opts["aie"] = run_definition(args.out, opts["aie"])
    info = {
        "facts": os.path.abspath(args.facts),
        "facts_sha256": _sha256(args.facts),
        "model": args.model,
        "options": opts,
        "settings": settings(model),
    }
    if k > 1:
        info["settings"]["pipeline"] = k
    err, warning, session = _start_run(args.out, info, len(done)) if rank == 0 else (None, None, 0)
    err, session = distributed.broadcast((err, session), ctx)
    if err:
        raise CLIError(err)
    stall = int(os.environ.get(_STALL, "0") or 0)
    written = [0]

    def write(f, res):
        if rank % k:
            return  # the stages of a replica hold the same results: its first stage writes them
        if stall and written[0] >= stall:
            from safetensors.torch import save_file

            save_file({"probs": res.probs}, stem(f) + ".safetensors")  # the prompt in flight: data, no record
            while True:
                time.sleep(0.05)
        save_trace(stem(f), res, f, {"rank": rank, "session": session})  # which process and session traced it
        written[0] += 1

    if rank == 0 and done:
        print(
            f"fxvene trace-facts: resuming {args.out}: {len(done)} prompt{'s' if len(done) != 1 else ''} already done",
            file=sys.stderr,
        )
    if warning:
        print(warning, file=sys.stderr)
    noise = opts["noise"]
    try:
        noise = float(noise)
    except (TypeError, ValueError):
        pass  # None or a spelling
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
        replace=opts["replace"],
    )
    distributed.barrier(ctx)
    if rank != 0:
        return 0
    skipped_idx = {s["index"] for s in res.skipped}
    traced = [f for f in facts if f.index not in skipped_idx]
    results = [load_trace(stem(f))[0] for f in traced]
    full = FactsTraceResult(results, traced, res.skipped, bad, dict(res.options, aie=opts["aie"]), memory=res.memory)
    _write_summary(args, full, write_json)
    print(full, file=out)
    print(
        f"{args.out}: {len(results)} prompt traces ({len(results) - len(done)} traced now, "
        f"{len(done)} from before) and the summary",
        file=out,
    )
    return 0


def _write_summary(args, full, write_json):
    from safetensors.torch import save_file

    from fxvene.sweeps.facts_results import atomic_write

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
    meta = {"definition": summary.definition, "quantity": summary.quantity}
    atomic_write(os.path.join(args.out, "summary.safetensors"), lambda tmp: save_file(tensors, tmp, metadata=meta))
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
