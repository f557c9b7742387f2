"""What a model takes and returns, for the tracer: nothing is assumed of ``forward`` beyond a lead
input (``input_ids`` or ``inputs_embeds``; ``pixel_values`` for an image model whose forward takes neither).

* Inputs: the requested inputs the forward takes are traced; the others (the ``attention_mask`` every
  call carries, given to pyvene's MLP) stay placeholders of the graph that feed only
  ``check_ignored_input``, which refuses a value the model would have needed (a padded mask).
  ``use_cache=False`` is passed only where the forward takes it, ``return_dict`` never: the graph
  returns what the model returns by default, as pyvene's calls do.
* Outputs: a ``ModelOutput``, a tuple of tensors (pyvene's MLP and GRU) or one tensor.
* Fixed lengths: export unrolls a loop over time steps (pyvene's GRU), so such a graph holds one
  sequence length. It is detected (``fixed_length``), guarded (``check_steps``) and traced
  once per length: ``steps_signature`` adds the length to a call's signature.
"""

from __future__ import annotations

import contextlib
import inspect
import weakref

import torch
import torch.fx  # noqa: F401  (torch.fx.node.has_side_effect)

from fxvene.graph.errors import TracingError


def forward_parameters(model):
    """The keyword inputs ``model.forward`` takes, or None when it takes any (``**kwargs``)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return frozenset(n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL)


def named_parameters(model):
    """The inputs ``model.forward`` names (whether or not it also takes ``**kwargs``)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return frozenset()
    return frozenset(n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))


def split_inputs(model, input_names):
    """``(taken, ignored)``: the requested inputs ``model.forward`` takes, and those it does not."""
    accepted = forward_parameters(model)
    if accepted is None:
        return tuple(input_names), ()
    taken = tuple(n for n in input_names if n in accepted)
    ignored = tuple(n for n in input_names if n not in accepted)
    lead = [n for n in input_names if n in LEADS]
    if lead and not any(n in accepted for n in lead):
        raise TracingError(f"{type(model).__name__}.forward takes no {lead[0]!r}; its inputs are {sorted(accepted)}")
    return taken, ignored


LEADS = ("input_ids", "inputs_embeds", "pixel_values", "input_features")  # what a call's first input can be


def lead_input(model):
    """``"input_ids"`` where the model's forward takes token ids and it has input embeddings to look
    them up in, else ``"inputs_embeds"`` (pyvene's MLP and GRU without ``include_emb``); ``"pixel_values"``
    for an image model whose forward takes neither (ResNet, ConvNeXt, ViT classifiers)."""
    named = named_parameters(model)
    for lead in ("pixel_values", "input_features"):  # input_features: a speech model (Whisper)
        if lead in named and not named & {"input_ids", "inputs_embeds"}:
            return lead
    accepted = forward_parameters(model)
    if accepted is None:
        return "input_ids"
    if "input_ids" in accepted:
        try:
            has_embeddings = model.get_input_embeddings() is not None
        except (AttributeError, NotImplementedError):
            has_embeddings = False
        if has_embeddings or "inputs_embeds" not in accepted:
            return "input_ids"
    return "inputs_embeds" if "inputs_embeds" in accepted else "input_ids"


def construction_inputs(model):
    """The inputs an IntervenableModel traces with to resolve its sites: the lead input and the
    mask, plus ``decoder_input_ids`` for an encoder-decoder model (T5), in the order of a call's
    signature (``fxvene.api.validation.INPUT_KEYS``)."""
    lead = lead_input(model)
    if lead == "pixel_values":  # an image: no sequence, no mask
        return (lead,)
    if lead == "input_features":  # a speech encoder-decoder: frames, then the decoder's ids
        return (lead, "decoder_input_ids")
    names = (lead, "attention_mask")
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        names += ("decoder_input_ids",)
    if lead == "input_ids" and image_tokens(model) is not None:  # LLaVA: text with its image spliced in
        names += ("pixel_values",)
    elif lead == "input_ids" and "pixel_values" in named_parameters(model):  # BLIP: text beside an image
        if "decoder_input_ids" in named_parameters(model) and "decoder_input_ids" not in names:
            names += ("decoder_input_ids",)  # BLIP's question answering: the answer decoder's ids
        names += ("pixel_values",)
    return names


def image_tokens(model):
    """``(token id, tokens per image)`` for a model that splices image features into its text at
    placeholder tokens (LLaVA), else None."""
    cfg = getattr(model, "config", None)
    if cfg is None or "pixel_values" not in named_parameters(model):
        return None
    token = getattr(cfg, "image_token_id", None)
    token = getattr(cfg, "image_token_index", None) if token is None else token
    if token is None:
        return None
    from fxvene.models.llava import image_token_count

    count = image_token_count(cfg)
    return None if count is None else (int(token), count)


def example_ids(model, batch, seq, generator, device):
    """Example token ids ``(batch, seq)``; for a model with image tokens (LLaVA) two text tokens, one
    image's placeholder tokens, then text (the sequence is lengthened to hold them)."""
    cfg = model.config
    vocab = getattr(cfg, "vocab_size", None) or getattr(getattr(cfg, "text_config", None), "vocab_size", None) or 16
    spec = image_tokens(model)
    seq = seq if spec is None else max(seq, spec[1] + 4)
    ids = torch.randint(0, int(vocab), (batch, seq), generator=generator)
    if spec is not None:
        token, count = spec
        ids[ids == token] = (token + 1) % int(vocab)
        ids[:, 2 : 2 + count] = token
    return ids.to(device)


def example_pixels(model, batch, generator, device, dtype):
    """An example image batch ``(batch, num_channels, side, side)`` for tracing an image model: the
    config's ``image_size`` where it has one (ViT's patch grid depends on it), else 64 pixels."""
    cfg = model.config
    cfg = cfg if getattr(cfg, "image_size", None) else getattr(cfg, "vision_config", None) or cfg  # LLaVA, BLIP
    side = getattr(cfg, "image_size", None) or 64
    side = side[0] if isinstance(side, (list, tuple)) else side
    channels = getattr(cfg, "num_channels", None) or 3
    return torch.randn(batch, channels, int(side), int(side), generator=generator).to(device=device, dtype=dtype)


def example_features(model, batch, generator, device, dtype):
    """An example ``input_features`` batch ``(batch, num_mel_bins, 2 * max_source_positions)`` (the frame
    count Whisper's encoder requires)."""
    cfg = model.config
    frames = 2 * int(getattr(cfg, "max_source_positions", 1500))
    return torch.randn(batch, int(cfg.num_mel_bins), frames, generator=generator).to(device=device, dtype=dtype)


def dynamic_dims(name, value):
    """The dimensions export keeps symbolic for input ``name``: batch and sequence, and an image's
    height and width (its channel count stays fixed)."""
    from torch.export import Dim

    if name == "pixel_values" and value.dim() == 4:
        return {0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO}
    if name == "input_features":  # the frame count is fixed by the model (Whisper checks it)
        return {0: Dim.AUTO}
    return {0: Dim.AUTO, 1: Dim.AUTO} if value.dim() >= 2 else ({0: Dim.AUTO} if value.dim() == 1 else None)


def switches(model, **flags):
    """``use_cache=False, return_dict=True`` (say), each only where the model's forward takes it: names it,
    or takes ``**kwargs`` and names nothing (a wrapper); a flag that would only land in the ``**kwargs`` of
    a forward that names its inputs (an image classifier of transformers 5) is left out."""
    accepted = forward_parameters(model)
    named = named_parameters(model)
    return {k: v for k, v in flags.items() if k in named or (accepted is None and not named)}


@contextlib.contextmanager
def text_cache_off(model):
    """``use_cache`` off in the model's ``text_config`` while it is traced: a wrapper whose forward takes the
    flag only through ``**kwargs`` (LLaVA on transformers 5) would otherwise return its language model's
    cache."""
    text = getattr(getattr(model, "config", None), "text_config", None)
    before = getattr(text, "use_cache", None)
    if before is not None:
        text.use_cache = False
    try:
        yield
    finally:
        if before is not None:
            text.use_cache = before


def flat_output(out):
    """``(output_cls, keys, flat tensors)`` of a model output: a ModelOutput's tensor fields, a tuple
    of tensors (keys "0", "1", ...), or one tensor."""
    if isinstance(out, torch.Tensor):
        return torch.Tensor, ("0",), (out,)
    if hasattr(out, "items") and hasattr(out, "keys"):  # a ModelOutput
        items = [(k, v) for k, v in out.items() if isinstance(v, torch.Tensor)]
        return type(out), tuple(k for k, _ in items), tuple(v for _, v in items)
    if isinstance(out, tuple) and all(isinstance(v, torch.Tensor) for v in out):
        return tuple, tuple(str(i) for i in range(len(out))), tuple(out)

    raise TracingError(
        f"the model returns {type(out).__name__} with entries of types "
        f"{[type(v).__name__ for v in out] if isinstance(out, (tuple, list)) else '?'}; fxvene traces models whose "
        "output is a ModelOutput, a tuple of tensors or a tensor"
    )


@torch.fx.node.has_side_effect
def check_ignored_input(value, name, model_name):
    """A graph node for an input the model's forward does not take: None, or a mask of ones (what
    every call carries), passes; anything else would be silently ignored, so it is refused."""
    if value is None or torch.compiler.is_compiling():
        return None
    if name != "attention_mask" or not bool((value == 1).all()):
        raise ValueError(
            f"{name}: {model_name}.forward takes no {name!r}, so it cannot be applied"
            + (" (this mask has padding)" if name == "attention_mask" else "")
            + f"; give {model_name} only the inputs its forward takes"
        )
    return None


def add_ignored_inputs(gm, ignored, model_name):
    """Placeholders for the requested inputs the model does not take (callers pass them), each
    feeding only ``check_ignored_input``."""
    if not ignored:
        return gm
    graph = gm.graph
    last = [n for n in graph.nodes if n.op == "placeholder"][-1]
    for name in ignored:
        with graph.inserting_after(last):
            ph = graph.placeholder(name, default_value=None)
        ph.meta["fxvene"] = "ignored_input"
        with graph.inserting_after(ph):
            chk = graph.call_function(check_ignored_input, (ph, name, model_name))
        chk.meta["fxvene"] = "ignored_input"
        last = chk
    graph.lint()
    gm.recompile()
    return gm


STEPS = "@steps="  # a signature entry (not an input): the sequence length a per-length graph is traced for
FIXED_LENGTH: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> the length it traced to


def steps_signature(model, inputs, signature):
    """``signature`` plus the call's sequence length where ``model`` traces to a graph of one length
    (a recurrent model whose loop over time steps export unrolls, e.g. pyvene's GRU)."""
    if model not in FIXED_LENGTH or any(str(k).startswith(STEPS) for k in signature):
        return signature
    lead = inputs["input_ids"] if "input_ids" in inputs else inputs["inputs_embeds"]
    return tuple(signature) + (f"{STEPS}{lead.shape[1]}",)


def fixed_length(gm, lead):
    """The sequence length an exported graph is specialised to (its loop unrolled), else None."""
    for n in gm.graph.nodes:
        if n.op == "placeholder" and n.name == lead:
            val = n.meta.get("val")
            if isinstance(val, torch.Tensor) and val.dim() >= 2:
                d = str(val.shape[1])  # a SymInt that export specialised prints as its value
                return int(d) if d.isdigit() else None
    return None


@torch.fx.node.has_side_effect
def check_steps(lead, steps, model_name):
    """A graph node of a fixed-length graph: the call must have the length it was traced for."""
    if not torch.compiler.is_compiling() and lead.shape[1] != steps:
        raise ValueError(
            f"inputs: {model_name} was traced for sequences of {steps} steps (its loop over time is unrolled), "
            f"this call has {lead.shape[1]}; fxvene traces it again per length when called through "
            "IntervenableModel"
        )
    return None


def guard_length(gm, lead, steps, model_name):
    graph = gm.graph
    ph = next(n for n in graph.nodes if n.op == "placeholder" and n.name == lead)
    last = [n for n in graph.nodes if n.op == "placeholder"][-1]
    with graph.inserting_after(last):
        chk = graph.call_function(check_steps, (ph, steps, model_name))
    chk.meta["fxvene"] = "fixed_length"
    graph.lint()
    gm.recompile()
    return gm
