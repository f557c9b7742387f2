"""Dataset-level sweeps: ROME causal tracing and activation patching over many facts.

``pv.causal_trace(model, "facts.jsonl", tokenizer=tok)`` (or a list of records) lands here
(``trace_facts``); ``pv.patching_sweep(model, records, tokenizer=tok)`` with records that carry
a ``"source"`` prompt lands in ``patch_facts``. Records are read by ``fxvene.sweeps.facts``.

How the prompts run:

* **only the facts the model gets right** are traced (ROME's rule: the plain model's top token is the
  target); ``only_correct=False`` traces all. The result lists the skipped ones and why.
* **batches of prompts of one length**: prompts are grouped by token length and up to
  ``batch_prompts`` of them run as one sweep (their rows side by side through the same graph
  segments). Rows of one batch never mix prompts, and no prompt is padded: GPT-2's absolute positions
  would shift under left padding, and the readout is the last position, which right padding would
  fill with a pad; so each prompt's numbers are those of its own ``causal_trace`` call (to float
  rounding: the batch shapes differ). The tokenizer's padding side plays no part.
* **bounded memory**: the rows of a batch run in chunks of ``max_rows`` whose readout is reduced
  to p(target) at once; ``batch_prompts`` and ``max_rows`` default to what fits a memory budget
  (``memory_budget``: bytes or "2GB"; default the model's own size, at least 256 MiB) by
  ``plan_memory``'s estimate.
* **reproducible row groups**: the causal-prefix engine groups rows by start position; dataset sweeps
  fix the grouping (``row_groups=1``: one group per start position) instead of choosing it by timings
  measured in each process, so a resumed or sharded run computes bit for bit what a single run does,
  given the same thread count (``torch.set_num_threads``: the CPU's matrix-product kernel, and so its
  order of summation, can depend on it), device and library versions. A resumed run cuts the same
  batches (``plan_batches`` ignores ``done``) and runs a batch with some prompts done whole: a
  prompt's last bits may depend on the shapes of its batch.
* **sharded**: under ``torchrun`` (``torch.distributed``), batches are split across ranks
  (``fxvene.sweeps.distributed``) and the per-prompt results gathered on rank 0 (other ranks return None).
"""

from __future__ import annotations

import numpy as np
import torch

from fxvene.graph.modes import runs_in_eval_mode
from fxvene.models import config_value
from fxvene.sweeps import distributed
from fxvene.sweeps.core import (
    STREAMS,
    check_layers,
    check_trace_args,
    engine_for,
    resolve_noise,
    token_lists,
    window_layers,
)
from fxvene.sweeps.facts import Loaded, _device, load_facts, parse_bytes, predictions
from fxvene.sweeps.facts_results import FactsPatchResult, FactsTraceResult

MiB = 1 << 20


# ------------------------------------------------------------------------------------ memory


def model_shape(model):
    """(hidden, heads, MLP width, layers, vocabulary, bytes per activation element) from the config."""
    cfg = model.config
    h = int(getattr(cfg, "n_embd", None) or cfg.hidden_size)
    heads = int(getattr(cfg, "n_head", None) or getattr(cfg, "num_attention_heads", 1))
    inner = getattr(cfg, "n_inner", None) or getattr(cfg, "intermediate_size", None) or 4 * h
    layers = int(getattr(cfg, "n_layer", None) or cfg.num_hidden_layers)
    vocab = int(cfg.vocab_size)
    elem = next(model.parameters()).element_size()
    return h, heads, int(inner), layers, vocab, elem


def plan_memory(model, seq, n_samples, n_sites, memory_budget=None, batch_prompts=None, max_rows=None):
    """``(batch_prompts, max_rows, budget_bytes)`` for sweeps over ``seq``-token prompts.

    Half the budget holds a batch's cached runs: per prompt ``2 * n_samples`` rows (corrupted and
    clean) of about ``n_sites + 2 * layers + 2`` cut values of ``seq x hidden``; the other half holds
    one chunk of rows in flight: per row ``seq x (8 hidden + 2 MLP width) + 2 heads x seq^2``
    activation elements and ``2 x vocabulary`` for the readout (logits and softmax). An estimate,
    not a measurement: ``benchmarks/memory.py`` compares it with the peak it gives."""
    h, heads, inner, layers, vocab, elem = model_shape(model)
    if memory_budget is None:
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        budget = max(256 * MiB, params)
    else:
        budget = parse_bytes(memory_budget)
    per_prompt = 2 * n_samples * (n_sites + 2 * layers + 2) * seq * h * elem
    per_row = (seq * (8 * h + 2 * inner) + 2 * heads * seq * seq + 2 * vocab) * elem
    if batch_prompts is None:
        batch_prompts = int(max(1, min(64, (budget // 2) // max(per_prompt, 1))))
    elif not isinstance(batch_prompts, int) or isinstance(batch_prompts, bool) or batch_prompts < 1:
        raise ValueError(f"batch_prompts must be a positive int, got {batch_prompts!r}")
    if max_rows is None:
        max_rows = int(max(1, (budget // 2) // max(per_row, 1)))
    elif not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 1:
        raise ValueError(f"max_rows must be a positive int, got {max_rows!r}")
    return batch_prompts, max_rows, budget


# ------------------------------------------------------------------------------------ batches


def plan_batches(facts, batch_prompts):
    """Batches of at most ``batch_prompts`` facts of one token length, by length then record order.
    Depends on the facts only (not on the ranks or on what is already done), so every run cuts the
    same batches."""
    by_len = {}
    for f in sorted(facts, key=lambda f: (f.n_tokens, f.index)):
        by_len.setdefault(f.n_tokens, []).append(f)
    out = []
    for n in sorted(by_len):
        group = by_len[n]
        out += [group[i : i + batch_prompts] for i in range(0, len(group), batch_prompts)]
    return out


def _skip_reason(tokenizer, fact, pred):
    top, p_top, p_tgt = pred

    def word(t):
        return repr(tokenizer.decode([t])) if tokenizer is not None else f"token {t}"

    return f"the model predicts {word(top)} (p={p_top:.3f}), not the target {word(fact.target_token)} (p={p_tgt:.3f})"


def _checked(model, facts, tokenizer, only_correct, source_field=None):
    """Load the records, run the correctness check: (facts to run, skipped records, malformed, all
    usable facts)."""
    vocab = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else None
    if isinstance(facts, Loaded):
        good, bad = facts  # already read (the command line reads them first)
    else:
        good, bad = load_facts(facts, tokenizer, vocab_size=vocab, source_field=source_field)
    if not good:
        first = f"; first: {bad[0]}" if bad else ""
        raise ValueError(f"facts: no usable record ({len(bad)} malformed{first})")
    if not isinstance(only_correct, bool):
        raise ValueError(f"only_correct must be True or False, got {only_correct!r}")
    preds = predictions(model, good)
    skipped, run = [], []
    for f in good:
        top = preds[f.index][0]
        if only_correct and top != f.target_token:
            skipped.append(
                {
                    "index": f.index,
                    "line": f.line,
                    "prompt": f.prompt,
                    "target": f.target,
                    "target_token": f.target_token,
                    "predicted": top,
                    "p_predicted": preds[f.index][1],
                    "p_target": preds[f.index][2],
                    "reason": _skip_reason(tokenizer, f, preds[f.index]),
                }
            )
        else:
            run.append(f)
    return run, skipped, bad, good


def _bar(total, progress, desc):
    if progress is False or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit="prompt", delay=0 if progress else 3.0, leave=progress is True, dynamic_ncols=True
    )


def _run_batches(eng, todo, results, done, on_result, progress, ctx, desc):
    """Every batch of ``todo`` under the engine's compile context, with a progress bar (rank 0 only):
    ``results(batch)`` yields ``(fact, result)`` pairs; those of facts not in ``done`` are kept and
    passed to ``on_result`` as each finishes. Returns ``{record index: result}``."""
    got = {}
    bar = _bar(sum(len(b) for b in todo), progress if (ctx is None or ctx.rank == 0) else False, desc)
    try:
        with eng.compiling():
            for batch in todo:
                for f, res in results(batch):
                    if f.index not in done:
                        got[f.index] = res
                        if on_result is not None:
                            on_result(f, res)
                if bar is not None:
                    bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    return got


# ------------------------------------------------------------------------------------ causal tracing


@runs_in_eval_mode
def trace_facts(
    model,
    facts,
    tokenizer=None,
    noise_level=None,
    n_samples=10,
    streams=STREAMS,
    window=10,
    seed=1,
    layers=None,
    only_correct=True,
    batch_prompts=None,
    max_rows=None,
    memory_budget=None,
    progress=None,
    compile=False,
    tracer="auto",
    prefix="auto",
    row_groups=1,
    on_result=None,
    done=(),
    replace=False,
    noise_corpus=None,
):
    """ROME causal tracing over a dataset of facts (Meng et al. 2022, fig. 2): every prompt traced
    as ``fxvene.causal_trace`` traces one, plus the averages over prompts by token class.

    ``facts``: a JSONL path or a list of records (``fxvene.sweeps.facts``); text records need
    ``tokenizer``. ``noise_level``: ROME's spellings as the one-prompt call (a number, None, ``"m"``,
    ``"t<d>"``, ``"u<x>"``: ``fxvene.sweeps.core.parse_noise``), and ``"s<k>"`` as ROME computes it:
    k x the std of the embeddings of each record's subject string tokenized on its own
    (``tokenizer(subject)``; token records: the prompt's subject tokens), pooled over every usable
    record, those the model gets wrong included; ``"subjects"`` (fxvene's older rule, kept): 3 x the std
    of the subject tokens as they occur in the traced prompts. ``noise_corpus``: the texts (or token-id
    lists) ``"m"`` and ``"t<d>"`` are fitted to (default: every usable record's prompt; ROME uses
    wikitext). ``replace``: the noise replaces the subject's embeddings. ``only_correct``: trace only the facts whose target
    is the model's top prediction (ROME). ``batch_prompts``, ``max_rows``, ``memory_budget``: see
    ``plan_memory``. ``row_groups``: positions per row group of the causal prefix (1: one group
    per start position, reproducible; None: chosen by the engine's timings). ``on_result(fact,
    result)`` is called as each prompt finishes; ``done``: record indices not to run (already
    done; a batch with any prompt not done runs whole, as in a run without ``done``). Returns a ``FactsTraceResult`` (on rank 0 under ``torch.distributed``; None on
    the others)."""
    fam, streams = check_trace_args(model, streams, window, n_samples)
    if row_groups is not None and (not isinstance(row_groups, int) or isinstance(row_groups, bool) or row_groups < 1):
        raise ValueError(f"row_groups must be a positive int or None, got {row_groups!r}")
    n_layers = int(config_value(model.config, fam.n_layers))
    layers = check_layers(layers, n_layers)
    run, skipped, bad, good = _checked(model, facts, tokenizer, only_correct)

    def subjects():  # ROME: each subject string on its own; token records: the prompt's subject tokens
        return [
            list(tokenizer(f.subject)["input_ids"])
            if isinstance(f.subject, str) and f.subject and tokenizer is not None
            else [f.input_ids[p] for p in f.subject_positions]
            for f in good
        ]

    noise = resolve_noise(
        model,
        noise_level,
        replace,
        subjects=subjects,
        prompt_subjects=lambda: [[f.input_ids[p] for p in f.subject_positions] for f in run],
        corpus=lambda: (
            [f.input_ids for f in good]
            if noise_corpus is None
            else token_lists(noise_corpus, tokenizer, "noise_corpus")
        ),
        corpus_given=noise_corpus is not None,
    )

    sites, site_index = [], {}
    for st in streams:
        for l in range(n_layers):
            site_index[(st, l)] = len(sites)
            sites.append((st, l))
    longest = max(f.n_tokens for f in run) if run else 1
    batch_prompts, max_rows_, budget = plan_memory(
        model, longest, n_samples, len(sites), memory_budget, batch_prompts, max_rows
    )
    ctx = distributed.context()
    batches = distributed.shard(plan_batches(run, batch_prompts), ctx)
    done = set(done)
    todo = [b for b in batches if any(f.index not in done for f in b)]
    options = dict(
        n_samples=n_samples,
        window=window,
        seed=seed,
        noise_level=noise.level,
        noise=noise_level if noise_level is None or isinstance(noise_level, str) else float(noise_level),
        replace=replace,
        noise_corpus=None if noise_corpus is None else len(noise_corpus),
        streams=streams,
        layers=layers,
        only_correct=only_correct,
        n_layers=n_layers,
    )
    got = {}
    if todo:
        eng = engine_for(model, sites, tracer, False, compile, prefix)

        def results(batch):
            for f, res in zip(
                batch,
                _trace_batch(
                    eng,
                    model,
                    batch,
                    streams,
                    layers,
                    n_layers,
                    window,
                    n_samples,
                    seed,
                    noise,
                    site_index,
                    max_rows_,
                ),
            ):
                if tokenizer is not None:
                    res.decode(tokenizer)
                yield f, res

        old_q = eng.offset_quantum
        eng.offset_quantum = row_groups
        try:
            got = _run_batches(eng, todo, results, done, on_result, progress, ctx, "fxvene causal trace")
        finally:
            eng.offset_quantum = old_q
    got = distributed.gather(got, ctx)
    if got is None:
        return None
    traced = [f for f in run if f.index in got]
    return FactsTraceResult(
        [got[f.index] for f in traced],
        traced,
        skipped,
        bad,
        options,
        memory=dict(batch_prompts=batch_prompts, max_rows=max_rows_, budget=budget),
    )


def _trace_batch(eng, model, batch, streams, layers, n_layers, window, n_samples, seed, noise, site_index, max_rows):
    """One batch of same-length prompts as one sweep; returns a CausalTraceResult per prompt."""
    from fxvene.sweeps.results import CausalTraceResult

    device = _device(model)
    P, S = len(batch), batch[0].n_tokens
    n = n_samples
    ids = torch.tensor([f.input_ids for f in batch], device=device)
    rep = ids.repeat_interleave(n, 0)
    mask = torch.ones_like(rep)
    emb = model.get_input_embeddings()
    dim = emb.weight.shape[1]
    noises = {}
    for f in batch:
        k = len(f.subject_positions)
        if k not in noises:
            noises[k] = noise.draw(n, k, dim, seed)
    with torch.no_grad():
        embedded = [emb(ids[i, f.subject_positions]).double() for i, f in enumerate(batch)]

    def perturb(x):  # each prompt's subject gets the noise its own causal_trace call gives it
        x = x.clone()
        for i, f in enumerate(batch):
            subj = torch.tensor(f.subject_positions, device=x.device)
            rows = slice(i * n, (i + 1) * n)
            drawn = noises[len(f.subject_positions)].to(x.device)
            part = noise.apply(x[rows][:, subj].double(), drawn, embedded[i].to(x.device))
            x[rows, subj] = part.to(x.dtype)
        return x

    positions = list(range(S))
    cells = [(si, pi, li) for si in range(len(streams)) for pi in range(S) for li in range(len(layers))]
    n_sites = len(site_index)
    one = np.full((len(cells) * n, n_sites), -1, dtype=np.int64)  # one prompt's rows (cells x samples)
    for c, (si, pi, li) in enumerate(cells):
        st = streams[si]
        lays = [layers[li]] if st == "block_output" else window_layers(layers[li], window, n_layers)
        for l in lays:
            one[c * n : (c + 1) * n, site_index[(st, l)]] = positions[pi]
    loc = np.tile(one, (P, 1))
    sample = (np.tile(np.arange(n), len(cells))[None, :] + n * np.arange(P)[:, None]).reshape(-1)
    target = torch.tensor([f.target_token for f in batch])
    base = eng.prepare({"input_ids": rep, "attention_mask": mask}, perturb=perturb)
    clean = eng.prepare({"input_ids": rep, "attention_mask": mask})
    # chunks of rows by first patched position (few row groups per chunk), each reduced to p(target) at once
    first = np.where(loc >= 0, loc, S).min(1)
    order = np.lexsort((np.arange(len(first)), first))
    p_rows = torch.empty(len(order), dtype=torch.float32)
    for i in range(0, len(order), max_rows):
        idx = order[i : i + max_rows]
        out = eng.run_rows(base, clean, {"sample": sample[idx], "loc": loc[idx], "head": None}, progress=False)
        tk = target[torch.from_numpy(sample[idx] // n)].to(out.device)
        p = torch.softmax(out.float(), -1)
        p_rows[torch.from_numpy(idx)] = p.gather(1, tk[:, None])[:, 0].cpu()
        del out, p
    per = p_rows.reshape(P, len(cells), n).mean(2).reshape(P, len(streams), S, len(layers))
    clean_p = torch.softmax(clean["final"].float(), -1).cpu()
    base_p = torch.softmax(base["final"].float(), -1).cpu()
    out = []
    for i, f in enumerate(batch):
        t = f.target_token
        out.append(
            CausalTraceResult(
                per[i].clone(),
                float(clean_p[i * n, t]),
                float(base_p[i * n : (i + 1) * n, t].mean()),
                list(streams),
                positions,
                list(layers),
                window,
                list(f.subject_positions),
                t,
                noise.level,
                n,
                input_ids=list(f.input_ids),
                n_layers=n_layers,
                replace=noise.replace,
            )
        )
    return out


# ------------------------------------------------------------------------------------ patching


@runs_in_eval_mode
def patch_facts(
    model,
    facts,
    tokenizer=None,
    components=("block_output",),
    layers=None,
    metric="prob",
    source_field="source",
    only_correct=True,
    batch_prompts=None,
    max_rows=None,
    memory_budget=None,
    progress=None,
    compile=False,
    tracer="auto",
    prefix="auto",
    on_result=None,
    done=(),
):
    """Activation patching over a dataset: each record's ``source`` prompt (same token length) is
    patched into its prompt at every component x layer x position, reading the target token
    (``metric="prob"``: p(target); ``"logits"``: its logit). Each prompt's ``SweepResult``
    equals ``patching_sweep(model, prompt, source, tokens=[target])`` (to float rounding); the
    summary averages the effects (value - unpatched) by ROME's token classes of the prompt's
    subject. Options as ``trace_facts``."""
    from fxvene.models import config_value, family_for
    from fxvene.sweeps.core import patching_rows

    if isinstance(components, str):
        components = (components,)
    components = list(components)
    if metric not in ("logits", "prob"):
        raise ValueError(f"metric must be 'logits' or 'prob', got {metric!r}")
    fam, _ = family_for(model)
    if fam is None:
        raise ValueError(f"patching_sweep needs a model family fxvene knows; got {type(model).__name__}")
    n_layers = int(config_value(model.config, fam.n_layers))
    layers = check_layers(layers, n_layers)
    run, skipped, bad, _ = _checked(model, facts, tokenizer, only_correct, source_field=source_field)
    sites = [(c, l) for c in components for l in layers]
    longest = max(f.n_tokens for f in run) if run else 1
    user_batch = batch_prompts
    batch_prompts, max_rows_, budget = plan_memory(
        model, longest, 1, len(sites), memory_budget, batch_prompts, max_rows
    )
    if user_batch is None:  # the readout of every row of a batch is held at once (logits, and softmax for "prob")
        vocab = model_shape(model)[4]
        per_prompt = len(sites) * longest * vocab * 4 * (2 if metric == "prob" else 1)
        batch_prompts = int(max(1, min(batch_prompts, (budget // 2) // per_prompt)))
    ctx = distributed.context()
    batches = distributed.shard(plan_batches(run, batch_prompts), ctx)
    done = set(done)
    todo = [b for b in batches if any(f.index not in done for f in b)]
    got = {}
    device = _device(model)
    readout_tokens = metric == "logits"
    if todo:
        eng = engine_for(model, sites, tracer, readout_tokens, compile, prefix)
        if any(s.n_heads is not None for s in eng.sites):
            raise ValueError("components: head components are not supported in dataset patching sweeps")

        def results(batch):
            S = batch[0].n_tokens
            b = {"input_ids": torch.tensor([f.input_ids for f in batch], device=device)}
            s = {"input_ids": torch.tensor([f.source_ids for f in batch], device=device)}
            b["attention_mask"] = torch.ones_like(b["input_ids"])
            s["attention_mask"] = torch.ones_like(s["input_ids"])
            tok = torch.tensor(sorted({f.target_token for f in batch}))
            res = patching_rows(
                eng,
                b,
                s,
                components,
                layers,
                list(range(S)),
                None,
                tok,
                readout_tokens,
                metric,
                len(batch),
                sites,
                max_rows_,
                False,
            )
            cols = tok.tolist()
            for i, f in enumerate(batch):
                if f.index in done:
                    continue
                c = cols.index(f.target_token)
                yield (
                    f,
                    type(res)(
                        res.values[..., i : i + 1, c : c + 1].clone(),
                        res.base[i : i + 1, c : c + 1].clone(),
                        list(components),
                        list(layers),
                        list(range(S)),
                        None,
                        tokens=[f.target_token],
                        metric=metric,
                    ),
                )

        got = _run_batches(eng, todo, results, done, on_result, progress, ctx, "fxvene patching sweep")
    got = distributed.gather(got, ctx)
    if got is None:
        return None
    traced = [f for f in run if f.index in got]
    options = dict(components=components, layers=layers, metric=metric, only_correct=only_correct, n_layers=n_layers)
    return FactsPatchResult(
        [got[f.index] for f in traced],
        traced,
        skipped,
        bad,
        options,
        memory=dict(batch_prompts=batch_prompts, max_rows=max_rows_, budget=budget),
    )


__all__ = ["trace_facts", "patch_facts", "plan_memory", "plan_batches", "parse_bytes"]
