"""What dataset sweeps return: per-prompt results and ROME's averages by token class, their figures,
and the per-prompt files of a run directory.

ROME (Meng et al. 2022, sec. 2 and fig. 2) averages causal traces over known facts by the position
of the restored token relative to the subject. For a prompt with subject tokens ``s0 .. s1`` and last
token ``t``, the classes are (as ROME's analysis code counts them):

* **first subject token** ``s0``; **middle subject tokens** ``s0+1 .. s1-1`` (each one a sample);
  **last subject token** ``s1``;
* **first subsequent token** ``s1+1``; **further tokens** ``s1+2 .. t-1`` (each one a sample);
  **last token** ``t``.

A one-token subject is both the first and the last subject token; when only one token follows the
subject it is both the first subsequent token and the last token; tokens before the subject are in
no class. Definitions (per prompt, p = the probability of the target token at the last position):

* total effect ``TE = p(clean) - p(subject corrupted)``; ``ATE`` its mean over prompts;
* ``AIE[stream, class, layer]``, the average indirect effect of restoring the clean state at one token
  and layer (a window of layers for MLP / attention), in one of two definitions (``DEFINITIONS``):
  ``"rome"`` (the default; ROME's analysis code): the mean restored p over the class's rows (prompts x
  positions) minus the mean corrupted p over all prompts; ``"per_prompt"``: the mean over the class's
  rows of each prompt's own difference ``p(restored) - p(corrupted)``. They agree where a class has one
  row per prompt (every class but the middle subject tokens and the further tokens).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import torch

from fxvene.sweeps.results import STREAM_CMAPS, STREAM_TITLES

DEFINITIONS = {
    "rome": "ROME's: mean restored - mean corrupted",
    "per_prompt": "per prompt: mean of restored - corrupted",
}

CLASSES = (
    "first subject token",
    "middle subject tokens",
    "last subject token",
    "first subsequent token",
    "further tokens",
    "last token",
)


def token_classes(subject_positions, n_tokens):
    """The positions of each of ROME's six token classes (``CLASSES``) in an ``n_tokens`` prompt."""
    s0, s1, last = subject_positions[0], subject_positions[-1], n_tokens - 1
    fa = s1 + 1
    return [[s0], list(range(s0 + 1, s1)), [s1], [fa] if fa <= last else [], list(range(fa + 1, last)), [last]]


@dataclass(repr=False)
class ClassSummary:
    """Averages over prompts by token class: ``effect[stream, class, layer]`` (AIE for causal traces,
    the mean patching effect for patching sweeps), ``value`` (the mean restored / patched value),
    ``sem`` (the standard error of ``effect``), ``counts[class]`` (samples: prompts x positions)."""

    effect: torch.Tensor
    value: torch.Tensor
    sem: torch.Tensor
    counts: list
    streams: list
    layers: list
    n_prompts: int
    quantity: str  # what is measured, e.g. "p(target)"
    kind: str  # "trace" or "patch"
    window: int | None = None
    n_layers: int | None = None
    total: dict = field(default_factory=dict)  # trace: ate, ate_sem, clean, corrupted; patch: base
    classes: tuple = CLASSES
    definition: str | None = None  # trace: the AIE's definition, "rome" or "per_prompt" (DEFINITIONS)

    @property
    def aie(self):
        """``effect`` under its ROME name (average indirect effect)."""
        return self.effect

    def best(self, stream):
        """``(class, layer, effect)`` of the largest average effect of ``stream``."""
        s = self.streams.index(stream)
        e = self.effect[s].clone()
        e[torch.isnan(e)] = -math.inf
        c, l = divmod(int(e.argmax()), e.shape[1])
        return self.classes[c], self.layers[l], float(self.effect[s, c, l])

    def to_dict(self):
        return {
            "kind": self.kind,
            "definition": self.definition,
            "quantity": self.quantity,
            "n_prompts": self.n_prompts,
            "classes": list(self.classes),
            "streams": self.streams,
            "layers": self.layers,
            "window": self.window,
            "n_layers": self.n_layers,
            "counts": self.counts,
            "total": self.total,
            "effect": _nan_none(self.effect.tolist()),
            "value": _nan_none(self.value.tolist()),
            "sem": _nan_none(self.sem.tolist()),
        }

    def __repr__(self):
        name = "AIE" if self.kind == "trace" else "mean effect"
        lines = [
            f"ClassSummary: {name} on {self.quantity} over {self.n_prompts} prompt"
            f"{'s' if self.n_prompts != 1 else ''} by token class x layer x stream"
        ]
        if self.definition is not None:
            lines[0] += f"; {name} = {DEFINITIONS[self.definition]}"

        if self.kind == "trace":
            t = self.total
            lines.append(f"  ATE {t['ate']:.4f} (clean {t['clean']:.4f}, subject corrupted {t['corrupted']:.4f})")
        lines.append("  samples per class: " + ", ".join(f"{c} {n}" for c, n in zip(self.classes, self.counts)))
        for st in self.streams:
            c, l, v = self.best(st)
            lines.append(f"  {st:<16} strongest: {c}, layer {l}: {name} {v:+.4f}")
        return "\n".join(lines)


def _nan_none(x):
    if isinstance(x, list):
        return [_nan_none(v) for v in x]
    return None if isinstance(x, float) and math.isnan(x) else x


def class_average(per_prompt, quantity, kind, streams, layers, window=None, n_layers=None, total=None, definition=None):
    """``per_prompt``: ``(effects[stream, position, layer], values[...], subject_positions)`` for each
    prompt -> ``ClassSummary`` (float64 sums; NaN where a class has no sample)."""
    A, L = len(streams), len(layers)
    s1 = torch.zeros(A, len(CLASSES), L, dtype=torch.float64)
    s2 = torch.zeros_like(s1)
    sv = torch.zeros_like(s1)
    n = [0] * len(CLASSES)
    for eff, val, subj in per_prompt:
        eff, val = eff.double(), val.double()
        for c, pos in enumerate(token_classes(subj, eff.shape[1])):
            for p in pos:
                s1[:, c] += eff[:, p]
                s2[:, c] += eff[:, p] ** 2
                sv[:, c] += val[:, p]
                n[c] += 1
    cnt = torch.tensor(n, dtype=torch.float64)[None, :, None]
    mean = s1 / cnt
    var = (s2 / cnt - mean**2).clamp(min=0) * cnt / (cnt - 1).clamp(min=1)
    sem = torch.where(cnt > 1, (var / cnt).sqrt(), torch.full_like(var, float("nan")))
    return ClassSummary(
        mean,
        sv / cnt,
        sem,
        n,
        list(streams),
        list(layers),
        len(per_prompt),
        quantity,
        kind,
        window,
        n_layers,
        total or {},
        definition=definition,
    )


# ------------------------------------------------------------------------------------ results


@dataclass(repr=False)
class _FactsResult:
    results: list  # one per run prompt, in record order
    facts: list  # fxvene.sweeps.facts.Fact of each result
    skipped: list  # dicts: index, line, prompt, reason, predicted, p_predicted, p_target
    malformed: list  # fxvene.sweeps.facts.Malformed
    options: dict
    memory: dict = field(default_factory=dict)
    _summary: object = None  # the summary, computed once (traces: {definition: summary})

    def __len__(self):
        return len(self.results)

    def __getitem__(self, i):
        return self.results[i]

    def __iter__(self):
        return iter(self.results)

    @property
    def n_skipped(self):
        return len(self.skipped)

    def _counts_line(self):
        n = len(self.results) + len(self.skipped) + len(self.malformed)
        parts = [f"{len(self.results)} of {n} records run"]
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped (the model does not predict the target)")
        if self.malformed:
            parts.append(f"{len(self.malformed)} malformed")
        return "; ".join(parts)

    def _tail_lines(self):
        lines = []
        for s in self.skipped[:5]:
            lines.append(f"  skipped line {s['line']}: {s['reason']}")
        if len(self.skipped) > 5:
            lines.append(f"  ... {len(self.skipped) - 5} more skipped (.skipped)")
        for m in self.malformed[:5]:
            lines.append(f"  malformed {m}")
        if len(self.malformed) > 5:
            lines.append(f"  ... {len(self.malformed) - 5} more malformed (.malformed)")
        return lines


class FactsTraceResult(_FactsResult):
    """Causal traces of a dataset of facts: ``results[i]`` is the ``CausalTraceResult`` of
    ``facts[i]``; ``.summary()`` ROME's averages by token class (``ClassSummary``);
    ``.plot()`` the average heatmaps, ``.plot_lines()`` the per-class curves. ``definition``:
    the AIE's, ``"rome"`` or ``"per_prompt"`` (``DEFINITIONS``); None: the run's own
    (``options["aie"]``, set by ``fxvene trace-facts``), else ``"rome"``."""

    def aie_definition(self, definition=None):
        """The AIE definition ``definition`` names (None: the run's, else ``"rome"``)."""
        if definition is None:
            definition = self.options.get("aie") or "rome"
        if definition not in DEFINITIONS:
            raise ValueError(f"definition must be 'rome' or 'per_prompt', got {definition!r}")
        return definition

    def summary(self, definition=None):
        definition = self.aie_definition(definition)
        if not isinstance(self._summary, dict):
            self._summary = {}
        if definition not in self._summary:
            if not self.results:
                raise ValueError("summary: no prompt was traced (see .skipped and .malformed)")
            r0 = self.results[0]
            te = torch.tensor([r.clean_prob - r.corrupted_prob for r in self.results], dtype=torch.float64)
            corrupted = sum(r.corrupted_prob for r in self.results) / len(self.results)
            total = {
                "ate": float(te.mean()),
                "ate_sem": float(te.std() / math.sqrt(len(te))) if len(te) > 1 else None,
                "clean": sum(r.clean_prob for r in self.results) / len(self.results),
                "corrupted": corrupted,
            }
            if definition == "rome":  # every row against the mean corrupted p of all prompts
                per = [(r.probs.double() - corrupted, r.probs, r.subject_positions) for r in self.results]
            else:
                per = [(r.probs - r.corrupted_prob, r.probs, r.subject_positions) for r in self.results]
            self._summary[definition] = class_average(
                per, "p(target)", "trace", r0.streams, r0.layers, r0.window, r0.n_layers, total, definition
            )
        return self._summary[definition]

    def plot(self, path=None, title=None, dpi=200, definition=None):
        """ROME's average heatmaps: ``plot_class_heatmaps`` of ``summary``."""
        return plot_class_heatmaps(self.summary(definition), path=path, title=title, dpi=dpi)

    def plot_lines(self, path=None, title=None, dpi=200, definition=None):
        """AIE by layer, one curve per token class and one panel per stream (``plot_class_lines``)."""
        return plot_class_lines(self.summary(definition), path=path, title=title, dpi=dpi)

    def __repr__(self):
        o = self.options
        level = o.get("noise_level", float("nan"))
        level = format(level, ".4g") if isinstance(level, (int, float)) else str(level)
        level += ", replacing the subject" if o.get("replace") else ""
        lines = [
            f"FactsTraceResult: causal traces of {self._counts_line()}",
            f"  {o.get('n_samples')} noise samples (noise {level}), window "
            f"{o.get('window')}, streams {', '.join(o.get('streams', []))}",
        ]
        if self.results:
            lines += ["  " + ln for ln in repr(self.summary()).splitlines()]
        lines += self._tail_lines()
        lines.append("  .results, .summary(), .plot(), .plot_lines(), .skipped, .malformed")
        return "\n".join(lines)


class FactsPatchResult(_FactsResult):
    """Patching sweeps of a dataset: ``results[i]`` is the ``SweepResult`` of ``facts[i]``
    (its source patched into its prompt, reading the target); ``.summary()`` the mean effects by
    ROME's token classes."""

    def summary(self):
        if self._summary is None:
            if not self.results:
                raise ValueError("summary: no prompt was run (see .skipped and .malformed)")
            r0 = self.results[0]
            per = []
            for r, f in zip(self.results, self.facts):
                v = r.values[..., 0, 0].permute(0, 2, 1)  # [component, position, layer]
                per.append((v - r.base[0, 0], v, f.subject_positions))
            q = "p(target)" if r0.metric == "prob" else "logit(target)"
            base = sum(float(r.base[0, 0]) for r in self.results) / len(self.results)
            self._summary = class_average(per, q, "patch", r0.components, r0.layers, total={"base": base})
        return self._summary

    def plot(self, path=None, title=None, dpi=200):
        return plot_class_heatmaps(self.summary(), path=path, title=title, dpi=dpi)

    def plot_lines(self, path=None, title=None, dpi=200):
        return plot_class_lines(self.summary(), path=path, title=title, dpi=dpi)

    def __repr__(self):
        lines = [f"FactsPatchResult: patching sweeps of {self._counts_line()}"]
        if self.results:
            lines += ["  " + ln for ln in repr(self.summary()).splitlines()]
        lines += self._tail_lines()
        lines.append("  .results, .summary(), .plot(), .plot_lines(), .skipped, .malformed")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ figures


def _figure(size, path):
    try:
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the figures need matplotlib: pip install matplotlib (or fxvene[plots])") from e
    if path is None:
        import matplotlib.pyplot as plt

        return plt.figure(figsize=size)
    return Figure(figsize=size)


def _xlabel(summary, stream):
    name = STREAM_TITLES.get(stream, stream)
    if summary.kind == "patch" or stream == "block_output" or summary.window is None:
        return "patched layer" if summary.kind == "patch" else "single restored layer"
    return f"center of interval of {summary.window} restored {name} layers"


def _ylabel(summary):
    if summary.kind == "trace":
        short = {"rome": " (ROME)", "per_prompt": " (per prompt)"}.get(summary.definition, "")
        return f"AIE{short} on {summary.quantity}"
    return f"mean effect on {summary.quantity}"


def _title(summary, title):
    if title is not None:
        return title
    if summary.kind == "trace":
        t = summary.total
        how = f", {DEFINITIONS[summary.definition]}" if summary.definition in DEFINITIONS else ""
        return (
            f"Average indirect effect on {summary.quantity} over {summary.n_prompts} prompts{how}\n"
            f"(ATE {t['ate']:.3f}: clean {t['clean']:.3f}, subject corrupted {t['corrupted']:.3f})"
        )
    return f"Mean effect of patching the source on {summary.quantity} over {summary.n_prompts} prompts"


def plot_class_heatmaps(summary, path=None, title=None, dpi=200):
    """ROME's average figure: one heatmap per stream, token classes x layers, coloured by the AIE
    (the mean patching effect for patching sweeps), colour bars labelled with the quantity."""
    if not isinstance(summary, ClassSummary):
        raise TypeError(f"summary must be a ClassSummary, got {type(summary).__name__}")
    n = len(summary.streams)
    fig = _figure((3.4 * n + 1.6, 3.0), path)
    axes = fig.subplots(1, n, squeeze=False)[0]
    step = max(1, -(-len(summary.layers) // 12))
    for i, (ax, st) in enumerate(zip(axes, summary.streams)):
        name = STREAM_TITLES.get(st, st)
        vals = summary.effect[i].float().numpy()
        im = ax.imshow(vals, cmap=STREAM_CMAPS.get(name, "Blues"), aspect="auto", interpolation="nearest")
        ax.set_yticks(range(len(summary.classes)))
        ax.set_yticklabels(list(summary.classes), fontsize=8)
        if i > 0:
            ax.tick_params(labelleft=False)
        ticks = list(range(0, len(summary.layers), step))
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(summary.layers[t]) for t in ticks], fontsize=7)
        ax.set_title(
            f"{name}" + ("" if st == "block_output" or summary.kind == "patch" else f" (window {summary.window})"),
            fontsize=10,
        )
        ax.set_xlabel(_xlabel(summary, st), fontsize=8)
        cbar = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.03)
        cbar.set_label(_ylabel(summary), fontsize=8)
        cbar.ax.tick_params(labelsize=7)
    fig.suptitle(_title(summary, title), fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return fig


def plot_class_lines(summary, path=None, title=None, dpi=200):
    """One panel per stream: the AIE (mean effect) by layer, one curve per token class with a band
    of +- one standard error."""
    if not isinstance(summary, ClassSummary):
        raise TypeError(f"summary must be a ClassSummary, got {type(summary).__name__}")
    n = len(summary.streams)
    fig = _figure((3.6 * n + 0.8, 3.2), path)
    axes = fig.subplots(1, n, squeeze=False, sharey=True)[0]
    for i, (ax, st) in enumerate(zip(axes, summary.streams)):
        for c, cls in enumerate(summary.classes):
            if not summary.counts[c]:
                continue
            y = summary.effect[i, c].float().numpy()
            line = ax.plot(summary.layers, y, label=cls, linewidth=1.3)[0]
            se = summary.sem[i, c].float().numpy()
            if not torch.isnan(summary.sem[i, c]).all():
                ax.fill_between(summary.layers, y - se, y + se, color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_title(STREAM_TITLES.get(st, st), fontsize=10)
        ax.set_xlabel(_xlabel(summary, st), fontsize=8)
        if i == 0:
            ax.set_ylabel(_ylabel(summary), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.axhline(0, color="0.6", linewidth=0.6)
    axes[-1].legend(fontsize=7, loc="best")
    fig.suptitle(_title(summary, title), fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return fig


# ------------------------------------------------------------------------------------ run directories


def atomic_write(path, write):
    """``write(tmp_path)`` then ``os.replace`` onto ``path``: a reader never sees half a file."""
    tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, obj):
    def w(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, w)


def save_trace(stem, result, fact, extra=None):
    """One prompt's ``CausalTraceResult`` as ``stem.safetensors`` (the probabilities) and
    ``stem.json`` (everything else, and the record); the JSON is written last, so its presence
    means the prompt is done."""
    from safetensors.torch import save_file

    atomic_write(stem + ".safetensors", lambda tmp: save_file({"probs": result.probs.contiguous().cpu()}, tmp))
    meta = {
        k: getattr(result, k)
        for k in (
            "clean_prob",
            "corrupted_prob",
            "streams",
            "positions",
            "layers",
            "window",
            "subject_positions",
            "target_token",
            "noise_level",
            "n_samples",
            "input_ids",
            "n_layers",
            "tokens",
            "target_text",
            "prompt",
            "replace",
        )
    }
    meta.update(index=fact.index, line=fact.line, record=fact.record, **(extra or {}))
    write_json(stem + ".json", meta)


def load_trace(stem):
    """``(CausalTraceResult, meta)`` from ``save_trace``'s files."""
    from safetensors.torch import load_file

    from fxvene.sweeps.results import CausalTraceResult

    with open(stem + ".json", encoding="utf-8") as f:
        meta = json.load(f)
    probs = load_file(stem + ".safetensors")["probs"]
    keys = (
        "clean_prob",
        "corrupted_prob",
        "streams",
        "positions",
        "layers",
        "window",
        "subject_positions",
        "target_token",
        "noise_level",
        "n_samples",
    )
    res = CausalTraceResult(
        probs,
        *[meta[k] for k in keys],
        input_ids=meta["input_ids"],
        n_layers=meta["n_layers"],
        tokens=meta["tokens"],
        target_text=meta["target_text"],
        prompt=meta["prompt"],
        replace=bool(meta.get("replace", False)),
    )
    return res, meta


__all__ = [
    "CLASSES",
    "DEFINITIONS",
    "ClassSummary",
    "FactsTraceResult",
    "FactsPatchResult",
    "class_average",
    "token_classes",
    "plot_class_heatmaps",
    "plot_class_lines",
    "save_trace",
    "load_trace",
    "write_json",
]
