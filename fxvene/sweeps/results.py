"""What sweeps return: ``SweepResult`` (patching grids), ``CausalTraceResult`` (ROME
causal tracing), and ``plot_causal_trace``, the heatmaps of a causal trace.

Both results print as a short summary (shape, axes, strongest cells), list their strongest
cells with ``.top(k)`` and become a long-form table with ``.to_dataframe()`` (pandas, when
installed; it is not a dependency of fxvene).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# what a causal-trace panel shows, in ROME's words (Meng et al. 2022, fig. 1)
STREAM_TITLES = {
    "block_output": "hidden state",
    "block_input": "hidden state (block input)",
    "mlp_activation": "MLP",
    "mlp_output": "MLP",
    "attention_output": "attention",
    "attention_value_output": "attention",
}
STREAM_CMAPS = {"hidden state": "Purples", "MLP": "Greens", "attention": "Reds"}
_MARKERS = {"Ġ": " ", "▁": " ", "Ċ": "\n", "ĉ": "\t"}  # byte-level BPE / sentencepiece markers


def clean_token(text):
    """A token as a reader writes it: tokenizer markers ("Ġ", "▁", "Ċ") replaced, whitespace
    stripped; a token that is only whitespace shows as an escape (``\\n``) or ``␣``."""
    s = str(text)
    for marker, char in _MARKERS.items():
        s = s.replace(marker, char)
    if s.strip():
        return s.strip()
    return repr(s)[1:-1] if s and s.strip(" ") else "␣" * max(1, len(s))


def _decode_one(tokenizer, token_id):
    if not hasattr(tokenizer, "decode"):
        raise TypeError(
            f"tokenizer must have a decode method (a Hugging Face tokenizer), got {type(tokenizer).__name__}"
        )
    return tokenizer.decode([int(token_id)])


def span(values):
    """``0..11`` for a contiguous list, else the list (shortened)."""
    values = list(values)
    if len(values) > 2 and values == list(range(values[0], values[0] + len(values))):
        return f"{values[0]}..{values[-1]}"
    return str(values) if len(values) <= 12 else f"[{', '.join(map(str, values[:10]))}, ... ({len(values)})]"


def _check_k(k):
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")


def _pandas(what):
    try:
        import pandas
    except ImportError as e:
        raise ImportError(
            f"{what}.to_dataframe needs pandas, which fxvene does not depend on: pip install pandas"
        ) from e
    return pandas


# ------------------------------------------------------------------------------------ patching sweeps


@dataclass(repr=False)
class SweepResult:
    """``values[component, layer, position, (head,) example, k]``: the readout of every cell
    (last-position logits over the vocabulary, or over ``tokens``; probabilities with
    ``metric="prob"``). ``base`` is the unpatched readout ``[example, k]``. The effect of a
    cell is its value minus the base value."""

    values: torch.Tensor
    base: torch.Tensor
    components: list
    layers: list
    positions: list
    heads: list | None = None
    tokens: list | None = None  # the token ids of the last axis (None: the whole vocabulary)
    metric: str = "logits"  # "logits" or "prob"

    @property
    def axes(self):
        """The names of ``values``' axes."""
        return ["component", "layer", "position"] + (["head"] if self.heads is not None else []) + ["example", "token"]

    @property
    def effects(self):
        """``values - base``, broadcast over the cell axes."""
        return self.values - self.base

    def _token_of_column(self, k):
        return int(self.tokens[k]) if self.tokens is not None else int(k)

    def _record(self, index):
        index = tuple(int(i) for i in index)
        idx = dict(zip(self.axes, index))
        rec = {
            "component": self.components[idx["component"]],
            "layer": self.layers[idx["layer"]],
            "position": self.positions[idx["position"]],
        }
        if self.heads is not None:
            rec["head"] = self.heads[idx["head"]]
        rec["example"] = idx["example"]
        rec["token"] = self._token_of_column(idx["token"])
        rec["value"] = float(self.values[index])
        rec["base"] = float(self.base[idx["example"], idx["token"]])
        rec["effect"] = rec["value"] - rec["base"]
        return rec

    def top(self, k=5, by="effect"):
        """The ``k`` cells with the largest effect (``by="effect"``: value - base, the largest
        increase; ``"abs_effect"``: the largest change either way; ``"value"``: the largest
        readout), as records ``{component, layer, position, (head,) example, token, value, base,
        effect}``, largest first. ``token`` is the readout's token id."""
        _check_k(k)
        keys = {"effect": lambda: self.effects, "abs_effect": lambda: self.effects.abs(), "value": lambda: self.values}
        if by not in keys:
            raise ValueError(f"by must be one of {', '.join(keys)}, got {by!r}")
        score = keys[by]().float().reshape(-1)
        order = torch.topk(score, min(k, score.numel())).indices.tolist()
        return [self._record(torch.unravel_index(torch.tensor(i), self.values.shape)) for i in order]

    def to_dataframe(self, tokens=None):
        """One row per cell and readout token: the cell's coordinates, ``token`` (id), ``value``,
        ``base`` and ``effect``. ``tokens``: only these token ids (needed when the readout is the
        whole vocabulary)."""
        pd = _pandas("SweepResult")
        cols = list(range(self.values.shape[-1]))
        if tokens is not None:
            ids = [tokens] if isinstance(tokens, int) else list(tokens)
            known = [self._token_of_column(c) for c in cols]
            missing = [t for t in ids if t not in known]
            if missing:
                raise ValueError(
                    f"tokens: {missing} are not in this sweep's readout "
                    f"({'token ids ' + str(self.tokens) if self.tokens is not None else 'the vocabulary'})"
                )
            cols = [known.index(t) for t in ids]
        elif len(cols) > 1000:
            raise ValueError(
                f"to_dataframe: the readout has {len(cols)} columns (the whole vocabulary); choose "
                "tokens=[id, ...] (or sweep with tokens=...)"
            )
        vals = self.values[..., cols].float()
        eff = (self.values - self.base)[..., cols].float()
        grid = torch.cartesian_prod(*[torch.arange(n) for n in vals.shape]).reshape(-1, vals.dim())
        data = {
            "component": [self.components[i] for i in grid[:, 0].tolist()],
            "layer": [self.layers[i] for i in grid[:, 1].tolist()],
            "position": [self.positions[i] for i in grid[:, 2].tolist()],
        }
        if self.heads is not None:
            data["head"] = [self.heads[i] for i in grid[:, 3].tolist()]
        data["example"] = grid[:, -2].tolist()
        data["token"] = [self._token_of_column(cols[i]) for i in grid[:, -1].tolist()]
        data["value"] = vals.reshape(-1).tolist()
        data["base"] = self.base[:, cols].float()[grid[:, -2], grid[:, -1]].tolist()
        data["effect"] = eff.reshape(-1).tolist()
        return pd.DataFrame(data)

    def __repr__(self):
        shape = " x ".join(f"{n} {a}{'s' if n != 1 else ''}" for n, a in zip(self.values.shape, self.axes))
        what = "probabilities" if self.metric == "prob" else "logits"
        read = f"tokens {self.tokens}" if self.tokens is not None else "the whole vocabulary"
        lines = [
            f"SweepResult: last-position {what} of {read}",
            f"  values [{shape}]",
            f"  components {', '.join(self.components)}; layers {span(self.layers)}; "
            f"positions {span(self.positions)}" + (f"; heads {span(self.heads)}" if self.heads is not None else ""),
        ]
        if self.values.numel():
            lines.append("  largest effects (value - unpatched base):")
            for r in self.top(3):
                head = f" head {r['head']}" if "head" in r else ""
                lines.append(
                    f"    {r['component']} layer {r['layer']} position {r['position']}{head}, example "
                    f"{r['example']}, token {r['token']}: {r['effect']:+.4g} ({r['value']:.4g} vs {r['base']:.4g})"
                )
        lines.append("  .top(k), .to_dataframe(), .values, .effects")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ causal tracing


def noise_text(result, fmt):
    """``result.noise_level`` as text (a number in ``fmt``, or ROME's spelling), ``replacing`` noted."""
    level = result.noise_level
    text = format(level, fmt) if isinstance(level, (int, float)) else str(level)
    return text + (", replacing the subject" if getattr(result, "replace", False) else "")


@dataclass(repr=False)
class CausalTraceResult:
    """``probs[stream, position, layer]``: p(target) with the subject corrupted and the clean
    state restored at (position, layer) (a window of layers centred on ``layer`` for the
    windowed streams), averaged over the noise samples. ``.decode(tokenizer)`` fills
    ``tokens`` and ``target_text`` so summaries and plots show words."""

    probs: torch.Tensor
    clean_prob: float
    corrupted_prob: float
    streams: list
    positions: list
    layers: list
    window: int
    subject_positions: list
    target_token: int
    noise_level: float | str  # the Gaussian's std, or ROME's spelling of other noise ("m", "t3", "u0.5")
    n_samples: int
    input_ids: list | None = None  # the prompt's token ids (for labels: plot_causal_trace(tokenizer=...))
    n_layers: int | None = None  # the model's layer count (where windows are clipped)
    tokens: list | None = None  # the prompt's tokens as text, one per position of the prompt (.decode)
    target_text: str | None = None  # the target token as text, e.g. " Seattle" (.decode)
    prompt: str | None = None  # the prompt as text (.decode)
    replace: bool = False  # the subject's embeddings replaced by the noise (not added to it)

    def decode(self, tokenizer):
        """Fill ``tokens`` and ``target_text`` from ``tokenizer``; returns the result."""
        if self.input_ids is None:
            raise ValueError(
                "decode: this result has no input_ids (made by an older causal_trace); set "
                "result.tokens = [...] and result.target_text = '...' instead"
            )
        self.tokens = [_decode_one(tokenizer, i) for i in self.input_ids]
        self.target_text = _decode_one(tokenizer, self.target_token)
        self.prompt = tokenizer.decode(self.input_ids, skip_special_tokens=True)
        return self

    @property
    def effects(self):
        """``probs - corrupted_prob``: the indirect effect of each restore."""
        return self.probs - self.corrupted_prob

    def restored_layers(self, stream, layer):
        """The layers a cell of ``stream`` centred on ``layer`` restores."""
        if stream == "block_output":
            return [layer]
        top = self.n_layers if self.n_layers is not None else max(self.layers) + 1
        return list(range(max(0, layer - self.window // 2), min(top, layer - (-self.window // 2))))  # ROME's window

    def target_label(self):
        """``p(" Seattle")`` (or ``p(token 559)`` without a decoded target)."""
        return f'p("{self.target_text}")' if self.target_text is not None else f"p(token {self.target_token})"

    def token_label(self, position):
        if self.tokens is not None and position < len(self.tokens):
            return clean_token(self.tokens[position])
        if self.input_ids is not None:
            return f"#{self.input_ids[position]}"
        return str(position)

    def _record(self, s, p, l):
        st, pos, layer = self.streams[s], self.positions[p], self.layers[l]
        prob = float(self.probs[s, p, l])
        return {
            "stream": st,
            "position": pos,
            "token": self.token_label(pos),
            "subject": pos in self.subject_positions,
            "layer": layer,
            "restored_layers": self.restored_layers(st, layer),
            "prob": prob,
            "effect": prob - self.corrupted_prob,
        }

    def top(self, k=5, stream=None):
        """The ``k`` restores with the largest effect on p(target), largest first, as records
        ``{stream, position, token, subject, layer, restored_layers, prob, effect}`` (``effect``:
        ``prob - corrupted_prob``). ``stream``: only that stream."""
        _check_k(k)
        if stream is not None and stream not in self.streams:
            raise ValueError(f"stream must be one of {self.streams}, got {stream!r}")
        probs = self.probs.float()
        if stream is not None:
            s0 = self.streams.index(stream)
            probs = torch.full_like(probs, float("-inf"))
            probs[s0] = self.probs[s0].float()
        n = probs.numel() if stream is None else probs[0].numel()
        order = torch.topk(probs.reshape(-1), min(k, n)).indices.tolist()
        return [self._record(*[int(i) for i in torch.unravel_index(torch.tensor(o), probs.shape)]) for o in order]

    def to_dataframe(self):
        """One row per (stream, position, layer): ``stream``, ``position``, ``token``, ``subject``,
        ``layer``, ``first_layer``/``last_layer`` (the restored window), ``prob``, ``effect``."""
        pd = _pandas("CausalTraceResult")
        rows = []
        for s in range(len(self.streams)):
            for p in range(len(self.positions)):
                for l in range(len(self.layers)):
                    r = self._record(s, p, l)
                    lays = r.pop("restored_layers")
                    r["first_layer"], r["last_layer"] = lays[0], lays[-1]
                    rows.append(r)
        cols = ["stream", "position", "token", "subject", "layer", "first_layer", "last_layer", "prob", "effect"]
        return pd.DataFrame(rows, columns=cols)

    def __repr__(self):
        head = f"CausalTraceResult: {self.target_label()}" + (f" after {self.prompt!r}" if self.prompt else "")
        subj = ", ".join(
            f"{self.token_label(p)!r}" if self.tokens is not None else str(p) for p in self.subject_positions
        )
        streams = ", ".join(
            f"{st}" + ("" if st == "block_output" else f" (window {self.window})") for st in self.streams
        )
        lines = [
            head,
            f"  clean {self.clean_prob:.4f}, subject corrupted {self.corrupted_prob:.4f} "
            f"(subject {subj}; noise {noise_text(self, '.4g')}, {self.n_samples} sample{'s' if self.n_samples != 1 else ''})",
            f"  probs [{len(self.streams)} streams x {len(self.positions)} positions x {len(self.layers)} layers]: "
            f"{streams}; positions {span(self.positions)}; layers {span(self.layers)}",
        ]
        if self.probs.numel():
            lines.append("  strongest restore per stream:")
            for st in self.streams:
                r = self.top(1, stream=st)[0]
                lines.append(
                    f"    {st:<16} token {r['token']!r}{'*' if r['subject'] else ''} (position "
                    f"{r['position']}), layer {r['layer']}: {r['prob']:.4f}"
                )
        lines.append("  .top(k), .to_dataframe(), fxvene.plot_causal_trace(result, tokenizer=...)")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ the figure


def _labels(result, tokens, tokenizer):
    """Clean labels for ``result.positions`` and the target's text (or None)."""
    target = result.target_text
    if tokens is not None:
        labels = [clean_token(t) for t in tokens]
        if len(labels) != len(result.positions):
            if len(labels) >= max(result.positions) + 1:
                labels = [labels[p] for p in result.positions]
            else:
                raise ValueError(
                    f"tokens: {len(labels)} labels for {len(result.positions)} positions "
                    f"(expected one per prompt token or one per traced position)"
                )
    elif tokenizer is not None:
        if result.input_ids is None:
            raise ValueError("tokenizer: this result has no input_ids to decode; pass tokens=[...] instead")
        labels = [clean_token(_decode_one(tokenizer, result.input_ids[p])) for p in result.positions]
    else:
        labels = [result.token_label(p) for p in result.positions]
    if tokenizer is not None and target is None:
        target = _decode_one(tokenizer, result.target_token)
    return [l + "*" if p in result.subject_positions else l for l, p in zip(labels, result.positions)], target


def _prompt(result, tokenizer):
    if tokenizer is not None and result.input_ids is not None:
        return tokenizer.decode(result.input_ids, skip_special_tokens=True)
    return result.prompt


def plot_causal_trace(result, tokens=None, path=None, title=None, tokenizer=None, dpi=200):
    """Draw a ``CausalTraceResult`` as ROME's figure (Meng et al. 2022): one heatmap per
    stream — "hidden state", "MLP", "attention" — of p(target) with the subject corrupted and
    the clean state restored at each (token, layer); windowed panels are labelled with their
    window. Colour bars are labelled with the quantity (``p(" Seattle")``) and start at the
    corrupted probability; subject tokens are marked ``*``; the title gives the prompt and the
    clean and corrupted probabilities. matplotlib is needed: ``pip install fxvene[plots]``.

    ``tokenizer``: decodes the prompt's tokens and the target (recommended). ``tokens``: labels
    for the positions instead (tokenizer markers such as "Ġ" are removed). ``title``: the
    first title line (default: the prompt). Saves to ``path`` when given (``dpi``); returns the
    figure.
    """
    if not isinstance(result, CausalTraceResult):
        raise TypeError(f"result must be a CausalTraceResult, got {type(result).__name__}")
    try:
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("plot_causal_trace needs matplotlib: pip install matplotlib (or fxvene[plots])") from e
    labels, target = _labels(result, tokens, tokenizer)
    quantity = f'p("{target}")' if target is not None else f"p(token {result.target_token})"
    n = len(result.streams)
    size = (2.6 * n + 1.4, 0.28 * len(labels) + 1.9)
    if path is None:  # interactive: a pyplot figure (shows in notebooks, plt.show())
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=size)
    else:  # a file: no pyplot state, no backend change
        fig = Figure(figsize=size)
    axes = fig.subplots(1, n, squeeze=False)[0]
    step = max(1, -(-len(result.layers) // 12))
    for i, (ax, st, mat) in enumerate(zip(axes, result.streams, result.probs)):
        name = STREAM_TITLES.get(st, st)
        vals = mat.float().numpy()
        im = ax.imshow(
            vals,
            cmap=STREAM_CMAPS.get(name, "Blues"),
            aspect="auto",
            interpolation="nearest",
            vmin=min(result.corrupted_prob, float(vals.min())),
            vmax=max(float(vals.max()), 1e-12),
        )
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels, fontsize=8)
        for lab, p in zip(ax.get_yticklabels(), result.positions):
            if p in result.subject_positions:
                lab.set_fontweight("bold")
        if i > 0:  # the tokens once, on the left
            ax.tick_params(labelleft=False)
        ticks = list(range(0, len(result.layers), step))
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(result.layers[t]) for t in ticks], fontsize=7)
        ax.tick_params(length=2)
        ax.set_title(name, fontsize=10)
        if st == "block_output":
            ax.set_xlabel("single restored layer", fontsize=8)
        else:
            ax.set_xlabel(f"center of interval of {result.window} restored {name} layers", fontsize=8)
        cbar = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.03)
        cbar.set_label(quantity, fontsize=8)
        cbar.ax.tick_params(labelsize=7)
    prompt = _prompt(result, tokenizer)
    first = title if title is not None else (f'"{prompt}"' if prompt else None)
    stats = (
        f"{quantity}: clean {result.clean_prob:.3f}, subject corrupted {result.corrupted_prob:.3f} "
        f"(subject tokens marked *; noise {noise_text(result, '.3g')}, {result.n_samples} sample{'s' if result.n_samples != 1 else ''})"
    )
    fig.suptitle((f"{first}\n" if first else "") + stats, fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return fig
