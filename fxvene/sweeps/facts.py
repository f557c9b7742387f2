"""Datasets of facts for dataset-level sweeps: records of (prompt, subject, target), read and checked.

A record is a dict (or one line of a JSONL file) in one of two forms:

* text: ``{"prompt": "The Space Needle is in downtown", "subject": "Space Needle", "target": " Seattle"}``
  (needs the model's tokenizer: the subject's tokens are the prompt tokens that overlap its first
  occurrence in the prompt; the target must be exactly one token, its leading space included);
* tokens: ``{"input_ids": [...], "subject_positions": [1, 2], "target_token": 559}`` (no tokenizer).

Any other keys (``"id"``, ``"relation"``, ...) are kept in ``Fact.record``. A malformed record
(not a JSON object, a missing field, a subject that is not in the prompt, a target that is not one
token, ...) is not fatal: ``load_facts`` returns it as a ``Malformed`` with its line number
(1-based, in the file or the list) and the reason, and the sweep goes on without it.

``predictions`` runs the plain model on every prompt (one batched forward per prompt length):
what it predicts, and p(target). ROME traces only the facts the model gets right; so do the
dataset sweeps unless told otherwise.
"""

from __future__ import annotations

import json
import numbers
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

TEXT_FIELDS = ("prompt", "subject", "target")
TOKEN_FIELDS = ("input_ids", "subject_positions", "target_token")


@dataclass
class Fact:
    """One usable record: the prompt's token ids, the subject's positions and the target token id."""

    index: int  # position among the records (0-based; malformed records keep their numbers)
    line: int  # 1-based line in the file (or item in the list)
    input_ids: list
    subject_positions: list
    target_token: int
    prompt: str | None = None
    subject: str | None = None
    target: str | None = None
    record: dict = field(default_factory=dict)
    source_ids: list | None = None  # patching datasets: the source prompt's ids (same length)

    @property
    def n_tokens(self):
        return len(self.input_ids)


@dataclass
class Malformed:
    """A record that was skipped: its 1-based line number, the reason and the raw text or record."""

    line: int
    reason: str
    raw: object = None

    def __str__(self):
        return f"line {self.line}: {self.reason}"


class Loaded(NamedTuple):
    """What ``load_facts`` returns: the usable facts and the malformed records (unpacks as a pair;
    the sweeps take it in place of a path or a list of records)."""

    facts: list
    malformed: list


def is_dataset(inputs):
    """Whether ``inputs`` names a dataset of facts (a JSONL path, or a list of records) rather than
    one tokenized prompt (a dict / BatchEncoding with ``input_ids``)."""
    if isinstance(inputs, (str, os.PathLike, Loaded)):
        return True
    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(r, Mapping) for r in inputs):
        return True
    return False


def read_records(facts):
    """``[(line, record_or_None, raw_or_reason)]`` from a JSONL path or a list of dicts. A line that
    is not a JSON object gives ``(line, None, reason)``; blank lines and ``#`` comments are skipped."""
    if isinstance(facts, (str, os.PathLike)):
        path = os.fspath(facts)
        if not os.path.isfile(path):
            raise ValueError(f"facts: {path!r} is not a file (expected a JSONL file of records)")
        out = []
        with open(path, encoding="utf-8") as f:
            for n, text in enumerate(f, 1):
                s = text.strip()
                if not s or s.startswith("#"):
                    continue
                try:
                    rec = json.loads(s)
                except json.JSONDecodeError as e:
                    out.append((n, None, f"not valid JSON ({e.msg} at column {e.colno})"))
                    continue
                if not isinstance(rec, dict):
                    out.append((n, None, f"expected a JSON object, got {type(rec).__name__}"))
                    continue
                out.append((n, rec, None))
        return out
    if isinstance(facts, (list, tuple)):
        if not facts:
            raise ValueError("facts: the list of records is empty")
        return [
            (n, dict(r), None) if isinstance(r, Mapping) else (n, None, f"expected a dict, got {type(r).__name__}")
            for n, r in enumerate(facts, 1)
        ]
    raise TypeError(f"facts must be a JSONL file path or a list of dicts, got {type(facts).__name__}")


def load_facts(facts, tokenizer=None, vocab_size=None, source_field=None):
    """Read and check records: returns ``Loaded(facts, malformed)``, lists of ``Fact`` and
    ``Malformed``. ``tokenizer`` is needed for text records; ``vocab_size`` bounds token ids.
    ``source_field``: also read a source prompt (patching datasets), of the same token length."""
    facts_out, bad = [], []
    for index, (line, rec, why) in enumerate(read_records(facts)):
        if rec is None:
            bad.append(Malformed(line, why))
            continue
        try:
            facts_out.append(_fact(index, line, rec, tokenizer, vocab_size, source_field))
        except _Bad as e:
            bad.append(Malformed(line, str(e), rec))
    return Loaded(facts_out, bad)


class _Bad(Exception):
    pass


def _fact(index, line, rec, tokenizer, vocab_size, source_field):
    if all(k in rec for k in TOKEN_FIELDS):
        ids = _int_list(rec["input_ids"], "input_ids", vocab_size)
        if not ids:
            raise _Bad("input_ids is empty")
        subj = _int_list(rec["subject_positions"], "subject_positions", None)
        tgt = rec["target_token"]
        if not isinstance(tgt, int) or isinstance(tgt, bool) or tgt < 0 or (vocab_size and tgt >= vocab_size):
            raise _Bad(f"target_token must be a token id in [0, {vocab_size or 'vocab'}), got {tgt!r}")
        fact = Fact(index, line, ids, subj, int(tgt), rec.get("prompt"), rec.get("subject"), rec.get("target"), rec)
    else:
        missing = [k for k in TEXT_FIELDS if k not in rec]
        if missing:
            have = ", ".join(sorted(rec)) or "none"
            raise _Bad(
                f"missing field{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
                f"(a record needs {', '.join(TEXT_FIELDS)} or {', '.join(TOKEN_FIELDS)}; it has {have})"
            )
        for k in TEXT_FIELDS:
            if not isinstance(rec[k], str) or not rec[k].strip():
                raise _Bad(f"{k} must be a non-empty string, got {rec[k]!r}")
        if tokenizer is None:
            raise ValueError(
                "tokenizer: text records (prompt, subject, target) need the model's tokenizer "
                "(tokenizer=...); or give input_ids, subject_positions, target_token"
            )
        prompt, subject, target = rec["prompt"], rec["subject"], rec["target"]
        ids = list(tokenizer(prompt)["input_ids"])
        subj = subject_span(tokenizer, prompt, subject, ids)
        tids = list(tokenizer(target, add_special_tokens=False)["input_ids"])
        if len(tids) != 1:
            shown = [tokenizer.decode([t]) for t in tids]
            raise _Bad(
                f"target {target!r} is {len(tids)} tokens {shown}, expected exactly one "
                "(give its first token, with its leading space)"
            )
        if vocab_size and any(not 0 <= t < vocab_size for t in ids + tids):
            raise _Bad(f"token ids outside the model's vocabulary of {vocab_size}")
        fact = Fact(index, line, ids, subj, int(tids[0]), prompt, subject, target, rec)
    if not fact.subject_positions:
        raise _Bad("the subject has no tokens")
    s = fact.subject_positions
    if s != list(range(s[0], s[0] + len(s))) or not 0 <= s[0] or s[-1] >= len(fact.input_ids):
        raise _Bad(
            f"subject_positions must be consecutive positions of the {len(fact.input_ids)}-token prompt, got {s}"
        )
    if source_field is not None:
        if source_field not in rec:
            raise _Bad(f"missing field {source_field!r} (the source prompt patched into the prompt)")
        src = rec[source_field]
        if isinstance(src, str):
            if tokenizer is None:
                raise ValueError(f"tokenizer: a text {source_field!r} needs the model's tokenizer")
            src = list(tokenizer(src)["input_ids"])
        else:
            src = _int_list(src, source_field, vocab_size)
        if len(src) != len(fact.input_ids):
            raise _Bad(
                f"{source_field} has {len(src)} tokens and the prompt {len(fact.input_ids)}: patching "
                "needs the same length"
            )
        fact.source_ids = src
    return fact


def _int_list(v, what, vocab_size):
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise _Bad(f"{what} must be a list of ints, got {v!r}")
    if vocab_size and any(not 0 <= x < vocab_size for x in v):
        raise _Bad(f"{what}: token ids must be in [0, {vocab_size})")
    return [int(x) for x in v]


def subject_span(tokenizer, prompt, subject, ids=None):
    """The positions of the prompt tokens that overlap the first occurrence of ``subject`` in
    ``prompt`` (by character offsets where the tokenizer gives them; else by matching the subject's
    own tokens). Raises ``_Bad`` when the subject is not in the prompt."""
    at = prompt.find(subject)
    if at < 0:
        raise _Bad(f"subject {subject!r} does not occur in the prompt {prompt!r}")
    ids = list(tokenizer(prompt)["input_ids"]) if ids is None else ids
    try:
        enc = tokenizer(prompt, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        offsets = None
    if offsets is not None and len(offsets) == len(ids):
        lo, hi = at, at + len(subject)
        pos = [i for i, (a, b) in enumerate(offsets) if b > a and a < hi and b > lo]
        if pos:
            return pos
    for form in (" " + subject, subject):  # no offsets: find the subject's tokens in the prompt's
        sub = list(tokenizer(form, add_special_tokens=False)["input_ids"])
        for i in range(len(ids) - len(sub) + 1):
            if sub and ids[i : i + len(sub)] == sub:
                return list(range(i, i + len(sub)))
    raise _Bad(f"subject {subject!r} is not a token span of the prompt {prompt!r}")


def predictions(model, facts, batch=64):
    """``{fact.index: (predicted token id, p(predicted), p(target))}`` from the plain model's
    last-position distribution; one forward per prompt length (at most ``batch`` prompts)."""
    import torch

    device = _device(model)
    out = {}
    by_len = {}
    for f in facts:
        by_len.setdefault(f.n_tokens, []).append(f)
    with torch.no_grad():
        for n in sorted(by_len):
            group = by_len[n]
            for i in range(0, len(group), batch):
                part = group[i : i + batch]
                ids = torch.tensor([f.input_ids for f in part], device=device)
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits[:, -1]
                p = torch.softmax(logits.float(), -1).cpu()
                top = p.argmax(-1)
                for j, f in enumerate(part):
                    out[f.index] = (int(top[j]), float(p[j, top[j]]), float(p[j, f.target_token]))
    return out


def _device(model):
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        import torch

        return torch.device("cpu")


def parse_bytes(value, what="memory_budget"):
    """``1 << 30``, ``"2GB"``, ``"512MiB"``, ``"1.5G"`` -> bytes (int)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0:
        return int(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", value)
        if m:
            scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
            n = int(float(m.group(1)) * scale)
            if n > 0:
                return n
    raise ValueError(f"{what} must be a positive number of bytes or a size such as '2GB' or '512MiB', got {value!r}")


def demo_facts_path():
    """The facts file shipped with the demo model (``fxvene/zoo/demo/facts.jsonl``)."""
    from fxvene.zoo.demo import demo_model_path

    return os.path.join(os.path.dirname(demo_model_path()), "facts.jsonl")


__all__ = [
    "Fact",
    "Malformed",
    "Loaded",
    "load_facts",
    "read_records",
    "is_dataset",
    "predictions",
    "subject_span",
    "demo_facts_path",
    "parse_bytes",
]
