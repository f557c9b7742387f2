"""Sweeps as batches: patching grids and ROME causal tracing on sliced graphs.

A sweep is a grid of single-site interventions (components x layers x positions (x heads)).
fxvene runs it as rows of batched forwards, and computes less than one forward per row:

* **readout** (pass ``passes.sweep.readout``): the LM head is applied to the last position
  only (or to a few token ids only), never the full-vocabulary unembedding at every position;
* **layer-start reuse** (pass ``passes.slice.segment``): the traced graph is cut into
  segments at the boundary right after every sweep site. The base (corrupted) run is run
  once through all segments and its values at every boundary are cached; a row that first
  changes site X joins the batch at the boundary after X, fed the cached base values there,
  so nothing below its first site is recomputed. Batches grow along the pipeline;
* **causal prefix** (``prefix="auto"``, the default where the model exports with a KV cache): a
  cell that patches position p changes nothing before p, at any layer. Sweeps run the model's
  *chunk* step graph (``generation.step_graph(model, "chunk")``: an S-token input after P cached
  positions), so a row starts at its first patched position and attends over the base run's
  cached keys/values of the positions before it. Rows of different lengths are *packed* end to end
  in lanes (fxvene/sweeps/packing.py; pass ``passes.pack.pack_attention`` gives every attention a mask
  that keeps each token to its own row), so every segment is one call for all rows and no position
  is computed twice. Where packing does not apply (compiled engines, head components, padded
  prompts, families other than GPT-2 and the Llama layout) rows are grouped by start position
  instead, as many groups as expected cost says (fxvene/sweeps/groups.py: a segment call has a fixed
  cost, measured once per engine, that more groups pay more often; one group is full-length rows).
  ``compile=True`` compiles the segments once (fxvene/graph/compile.py: rows unbacked, positions dynamic),
  prefix or not;
* **position-wise tail**: after the last layer's attention mixes positions, only the last
  position matters for the readout, so the rest of the last block runs on that position;
* **per-row selectors** (pass ``passes.sweep.insert_selectors``): every site gets an op fed
  with ``(src, loc, on)`` tensors, so row b applies cell b (restore the source/clean value
  of site X at position p) or nothing.

Source (clean) activations are computed once per sweep (they are the source run's values at
the same boundaries). Rows are chunked to ``max_rows``; a tqdm bar shows on long sweeps.

The base (corrupted) and source (clean) runs are one cache call (``SweepEngine.prepare_pair``).
This module holds the public functions; the engine (segments, caching, selectors) is
``fxvene.sweeps.engine``, its two ways of running rows ``fxvene.sweeps.packing`` and
``fxvene.sweeps.groups``.
"""

from __future__ import annotations

import numpy as np
import torch

from fxvene.graph.modes import runs_in_eval_mode
from fxvene.models import config_value, family_for
from fxvene.sweeps.core import (
    STREAMS,
    check_layers,
    check_positions,
    check_trace_args,
    engine_for,
    patching_rows,
    resolve_noise,
    token_ids,
    token_lists,
    window_layers,
)
from fxvene.sweeps.engine import ids_mask, position_pair
from fxvene.sweeps.image_noise import image_noise, image_pixels
from fxvene.sweeps.results import CausalTraceResult


def _refuse_encoder_decoder(model, what):
    """The sweep engine cuts a decoder-only graph (its chunk step graph, the LM head's readout): an
    encoder-decoder (T5, BART, Whisper) gets a ValueError that says so."""
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        raise ValueError(
            f"model: {what} runs decoder-only models; {type(model).__name__} is an encoder-decoder (patch it "
            "per cell with IntervenableModel and decoder_input_ids)"
        )


@runs_in_eval_mode
def patching_sweep(
    model,
    base,
    source=None,
    components=("block_output",),
    layers=None,
    positions=None,
    heads=None,
    tokens=None,
    metric="logits",
    max_rows=None,
    progress=None,
    compile=False,
    tracer="auto",
    prefix="auto",
    **dataset,
):
    """Activation patching over a grid: for every component x layer x position (x head) cell,
    the base run with that site's unit replaced by the source run's unit at the same position.

    Equivalent to one ``IntervenableModel`` (Vanilla at ``component``/``layer``) call per cell
    with ``unit_locations={"sources->base": position}``, reading the last position's logits.
    ``tokens``: token ids to read (returns only their logits, computed without the full
    unembedding); ``metric="prob"``: softmax probabilities (over the full vocabulary) of
    ``tokens`` (or of every token when None).

    ``prefix``: reuse the causal prefix (rows recompute only the positions from their patched one
    on, over cached keys/values). ``"auto"`` uses it where the model's chunk step graph exports
    and passes its checks (else full-length rows: same numbers); ``True`` insists (ValueError
    otherwise); ``False`` runs full-length rows. ``compile``: True or a dict of ``torch.compile`` options
    (fxvene/graph/compile.py): the engine's graph segments are compiled once, on the first call, and
    reused for every later prompt, length and grid (prefix or not).

    Many prompts: ``base`` a JSONL path or a list of records (prompt, subject, target and a
    ``source`` prompt of the same length) runs ``fxvene.sweeps.datasets.patch_facts`` (keyword
    options there: ``tokenizer``, ``only_correct``, ``batch_prompts``, ``memory_budget``, ...).
    """
    from fxvene.sweeps.facts import is_dataset

    _refuse_encoder_decoder(model, "patching_sweep")
    if is_dataset(base):
        for name, v in (("source", source), ("positions", positions), ("heads", heads), ("tokens", tokens)):
            if v is not None:
                raise ValueError(
                    f"{name}: a dataset patching sweep takes it from the records (or runs every position), got {v!r}"
                )
        from fxvene.sweeps.datasets import patch_facts

        return patch_facts(
            model,
            base,
            components=components,
            layers=layers,
            metric=metric,
            max_rows=max_rows,
            progress=progress,
            compile=compile,
            tracer=tracer,
            prefix=prefix,
            **dataset,
        )
    if dataset:
        raise TypeError(
            f"patching_sweep: {sorted(dataset)} are options of dataset sweeps (base a JSONL path or a list of records)"
        )
    if source is None:
        raise TypeError("patching_sweep: source is needed (the inputs patched into base)")
    if isinstance(components, str):
        components = (components,)
    if metric not in ("logits", "prob"):
        raise ValueError(f"metric must be 'logits' or 'prob', got {metric!r}")
    b_ids, _, s_ids, _ = position_pair(base, source, "sweeps patch")
    fam, _ = family_for(model)
    n_layers = int(config_value(model.config, fam.n_layers)) if fam is not None else 0
    layers = check_layers(layers, n_layers)
    positions = check_positions(positions, b_ids.shape[1], "positions")
    tok = token_ids(tokens, model)
    readout_tokens = tok is not None and metric == "logits"
    sites = [(c, l) for c in components for l in layers]
    eng = engine_for(model, sites, tracer, readout_tokens, compile, prefix, seq=b_ids.shape[1])
    head_comp = [eng.sites[i].n_heads is not None for i in range(len(sites))]
    if any(head_comp) and not all(head_comp):
        raise ValueError("components: mix head components (head_*) and whole components in separate sweeps")
    if any(head_comp):
        nh = eng.sites[0].n_heads
        heads = list(range(nh)) if heads is None else list(heads)
        for h in heads:
            if not isinstance(h, int) or not 0 <= h < nh:
                raise ValueError(f"heads: {h!r} is out of range for {nh} heads")
    elif heads is not None:
        raise ValueError("heads: only for head components (head_attention_value_output, head_query_output, ...)")
    B = b_ids.shape[0]
    with eng.compiling():
        return patching_rows(
            eng,
            base,
            source,
            components,
            layers,
            positions,
            heads,
            tok,
            readout_tokens,
            metric,
            B,
            sites,
            max_rows,
            progress,
        )


@runs_in_eval_mode
def causal_trace(
    model,
    inputs,
    subject_positions=None,
    target_token=None,
    noise_level=None,
    n_samples=10,
    streams=STREAMS,
    window=10,
    seed=1,
    positions=None,
    layers=None,
    max_rows=None,
    progress=None,
    compile=False,
    tracer="auto",
    prefix="auto",
    replace=False,
    noise_corpus=None,
    tokenizer=None,
    target_position=None,
    **dataset,
):
    """ROME causal tracing (Meng et al. 2022; pyvene's Causal_Tracing tutorial), batched.

    The subject tokens' embeddings (the input of block 0) get noise (``n_samples`` draws,
    ``RandomState(seed)``); for every stream, position and layer the clean state is restored:
    ``block_output`` at that layer, ``mlp_activation``/``attention_output`` at the window of ``window``
    layers around it (``window_layers``). ``noise_level`` takes ROME's spellings
    (``fxvene.sweeps.core.parse_noise``): a number (Gaussian of that std); None (3 x the std of the
    input embedding matrix); ``"s<k>"`` (k x the std of the subject's embeddings: here, one prompt
    without a subject string, the prompt's subject tokens; ``"subjects"`` is ``"s3"`` of them);
    ``"m"`` (a multivariate Gaussian fitted to the embeddings of ``noise_corpus``, texts with
    ``tokenizer`` or token-id lists, default this prompt); ``"t<d>"`` (its draws scaled as a Student-t
    of d degrees); ``"u<x>"`` (uniform in [-x, x]). ``replace=True``: the subject's token embeddings
    are replaced by the noise instead of added to it. With ``n_samples=1, seed=1,
    noise_level=PYVENE_NOISE_LEVEL`` and 4 subject tokens this is exactly pyvene's tutorial loop.
    ``prefix``, ``compile``, ``max_rows``: as in ``patching_sweep``.

    Vision-language (LLaVA): with ``pixel_values`` in ``inputs`` the noise goes to the spliced image features
    at the subject positions (image tokens, ``pv.image_token_positions``), by default 3 x their std
    (``fxvene.sweeps.image_noise``); ``pv.image_patch_trace`` lays the cells out over the patch grid.

    ``target_position``: the position whose predicted token is ``target_token`` (default: the last, the
    next-token prediction of a causal LM). A masked LM (BERT, RoBERTa, ESM) predicts the token at a masked
    position: pass that position; an encoder needs it (its last position predicts itself).

    Many prompts: ``inputs`` a JSONL path or a list of records (prompt, subject, target) runs
    ``fxvene.sweeps.datasets.trace_facts`` — every prompt traced as here, ROME's averages by token
    class, only the facts the model gets right (keyword options there: ``tokenizer``,
    ``only_correct``, ``batch_prompts``, ``memory_budget``, ...; ``noise_level="subjects"``).
    """
    from fxvene.sweeps.facts import is_dataset

    _refuse_encoder_decoder(model, "causal_trace")
    if is_dataset(inputs):
        for name, v in (
            ("subject_positions", subject_positions),
            ("target_token", target_token),
            ("positions", positions),
            ("target_position", target_position),
        ):
            if v is not None:
                raise ValueError(
                    f"{name}: a dataset trace takes it from the records (or traces every position), got {v!r}"
                )
        from fxvene.sweeps.datasets import trace_facts

        return trace_facts(
            model,
            inputs,
            noise_level=noise_level,
            n_samples=n_samples,
            streams=streams,
            window=window,
            seed=seed,
            layers=layers,
            max_rows=max_rows,
            progress=progress,
            compile=compile,
            tracer=tracer,
            prefix=prefix,
            replace=replace,
            noise_corpus=noise_corpus,
            tokenizer=tokenizer,
            **dataset,
        )
    if dataset:
        raise TypeError(
            f"causal_trace: {sorted(dataset)} are options of dataset traces (inputs a JSONL path or a list of records)"
        )
    if subject_positions is None or target_token is None:
        raise TypeError("causal_trace: subject_positions and target_token are needed for one prompt")
    ids, mask = ids_mask(inputs, "inputs")
    if ids.shape[0] != 1:
        raise ValueError(f"inputs: causal tracing takes one prompt (batch 1), got batch {ids.shape[0]}")
    seq = ids.shape[1]
    fam, streams = check_trace_args(model, streams, window, n_samples)
    subj = check_positions(subject_positions, seq, "subject_positions")
    n_layers = int(config_value(model.config, fam.n_layers))
    layers = check_layers(layers, n_layers)
    positions = check_positions(positions, seq, "positions")
    read_at = -1
    if target_position is not None:
        if not isinstance(target_position, (int, np.integer)) or isinstance(target_position, bool):
            raise TypeError(f"target_position must be one position (an int), got {target_position!r}")
        read_at = check_positions(target_position, seq, "target_position")
        read_at = -1 if read_at[0] == seq - 1 else read_at[0]
    elif not fam.causal:
        raise ValueError(
            f"target_position: {type(model).__name__} attends both ways; give the position whose token is "
            "the target (the masked one)"
        )
    V = model.get_output_embeddings().weight.shape[0]
    if not isinstance(target_token, (int, np.integer)) or not 0 <= int(target_token) < V:
        raise ValueError(f"target_token must be a token id in [0, {V}), got {target_token!r}")
    target_token = int(target_token)
    prompt_ids = ids[0].tolist()
    subject_ids = [[prompt_ids[p] for p in subj]]
    pixels = image_pixels(model, inputs, ids)  # LLaVA: the noise goes on the spliced image features
    if pixels is None:
        noise = resolve_noise(
            model,
            noise_level,
            replace,
            subjects=lambda: subject_ids,
            prompt_subjects=lambda: subject_ids,
            corpus=lambda: (
                [prompt_ids] if noise_corpus is None else token_lists(noise_corpus, tokenizer, "noise_corpus")
            ),
            corpus_given=noise_corpus is not None,
        )
    else:
        noise, perturb = image_noise(model, ids, subj, noise_level, replace, noise_corpus is not None, n_samples, seed)
    emb = model.get_input_embeddings()

    sites, site_index = [], {}
    for st in streams:
        for l in range(n_layers):
            site_index[(st, l)] = len(sites)
            sites.append((st, l))
    eng = engine_for(model, sites, tracer, False, compile, prefix, read_at, seq=seq, images=pixels is not None)
    if pixels is None:
        draws = noise.draw(n_samples, len(subj), emb.weight.shape[1], seed)
        subj_t = torch.tensor(subj)
        with torch.no_grad():
            embedded = emb(ids[0, subj_t].to(emb.weight.device)).double()

        def perturb(x):
            x = x.clone()
            part = noise.apply(x[:, subj_t].double(), draws.to(x.device), embedded.to(x.device))
            x[:, subj_t] = part.to(x.dtype)
            return x

    cells = [(si, pi, li) for si in range(len(streams)) for pi in range(len(positions)) for li in range(len(layers))]
    R = len(cells) * n_samples
    loc = np.full((R, len(sites)), -1, dtype=np.int64)
    sample = np.tile(np.arange(n_samples), len(cells))
    for c, (si, pi, li) in enumerate(cells):
        st = streams[si]
        lays = [layers[li]] if st == "block_output" else window_layers(layers[li], window, n_layers)
        for l in lays:
            loc[c * n_samples : (c + 1) * n_samples, site_index[(st, l)]] = positions[pi]
    with eng.compiling():
        px = {} if pixels is None else {"pixel_values": pixels}
        base, clean = eng.prepare_pair(
            {"input_ids": ids.expand(n_samples, seq), "attention_mask": mask.expand(n_samples, seq)}
            | {k: v.repeat(n_samples, 1, 1, 1) for k, v in px.items()},
            {"input_ids": ids, "attention_mask": mask, **px},
            perturb=perturb,
        )
        out = eng.run_rows(
            base, clean, {"sample": sample, "loc": loc, "head": None}, max_rows=max_rows, progress=progress
        )
    probs = torch.softmax(out.float(), -1)[:, target_token].reshape(len(cells), n_samples).mean(1)
    probs = probs.reshape(len(streams), len(positions), len(layers))
    clean_p = float(torch.softmax(clean["final"].float(), -1)[0, target_token])
    corrupt_p = float(torch.softmax(base["final"].float(), -1)[:, target_token].mean())
    return CausalTraceResult(
        probs,
        clean_p,
        corrupt_p,
        streams,
        positions,
        layers,
        window,
        subj,
        target_token,
        noise.level,
        n_samples,
        input_ids=ids[0].tolist(),
        n_layers=n_layers,
        replace=noise.replace,
    )


__all__ = ["causal_trace", "patching_sweep"]
