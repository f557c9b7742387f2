"""The support matrix: which feature is tested on which model family.

A family-feature test carries ``cell(family, feature)`` (a ``pytest.mark.matrix``), e.g.
``pytest.param("gemma2", marks=cell("gemma2", "generate"))``; the README's support matrix is
generated from these marks and the outcomes CI records, never written by hand:

* as a pytest plugin (``pytest_plugins`` in tests/conftest.py), with ``FXVENE_MATRIX_OUT=path.json``
  set, a run writes the outcome of every marked test: family, feature, passed/failed/skipped, the
  transformers version and the frontend (when the test is parametrized by ``frontend``);
  with ``FXVENE_MATRIX_CELLS=path.json`` set, a ``--collect-only`` run writes the marked tests it
  collected (no outcomes: what the test files declare);
* ``python tests/_matrix.py render OUT_4.json OUT_5.json`` prints the markdown table, family x feature,
  each cell listing the transformers lines (and frontends) where its tests pass; ``.ci/run`` writes one
  JSON per line and prints the table at the end;
* tests/test_matrix.py checks that the README's table (between ``<!-- support-matrix:start -->`` and
  ``<!-- support-matrix:end -->``) lists exactly the cells the marks declare on this line.
"""

import json
import os
import sys

import pytest

FEATURES = (
    "components",
    "intervene",
    "trainable",
    "patching_sweep",
    "causal_trace",
    "generate",
    "graph_diff",
    "cli",
    "left_padding",
    "pyvene_diff",
)
START, END = "<!-- support-matrix:start -->", "<!-- support-matrix:end -->"


def cell(family, feature):
    """The mark of a (family, feature) cell; ``FEATURES`` are the table's first columns, other features
    (e.g. ``derived_spec``) follow them."""
    if not (isinstance(family, str) and family and isinstance(feature, str) and feature):
        raise ValueError(f"cell(family, feature) takes two non-empty strings, got {family!r}, {feature!r}")
    return pytest.mark.matrix(family=family, feature=feature)


# ------------------------------------------------------------------------------------- the plugin

_ITEMS = {}  # nodeid -> [(family, feature, frontend)]
_OUTCOMES = {}  # nodeid -> "passed" | "failed" | "skipped"


def _cells(item):
    params = getattr(getattr(item, "callspec", None), "params", {})
    frontend = params.get("frontend")
    return [(m.kwargs["family"], m.kwargs["feature"], frontend) for m in item.iter_markers("matrix")]


def _versions():
    import torch
    import transformers

    return {"transformers": transformers.__version__, "torch": torch.__version__.split("+")[0]}


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        cells = _cells(item)
        if cells:
            _ITEMS[item.nodeid] = cells
    path = os.environ.get("FXVENE_MATRIX_CELLS")
    if path:
        rows = [dict(family=f, feature=ft, frontend=fe, test=nid) for nid, cs in _ITEMS.items() for f, ft, fe in cs]
        _write(path, {**_versions(), "cells": rows})


def pytest_runtest_logreport(report):
    if report.nodeid not in _ITEMS:
        return
    prev = _OUTCOMES.get(report.nodeid)
    if report.failed:
        _OUTCOMES[report.nodeid] = "failed"
    elif report.skipped and prev != "failed":
        _OUTCOMES[report.nodeid] = "skipped"
    elif report.when == "call" and report.passed and prev is None:
        _OUTCOMES[report.nodeid] = "passed"


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("FXVENE_MATRIX_OUT")
    if not path or not _ITEMS:
        return
    rows = [
        dict(family=f, feature=ft, frontend=fe, test=nid, outcome=_OUTCOMES.get(nid, "not run"))
        for nid, cs in _ITEMS.items()
        for f, ft, fe in cs
    ]
    _write(path, {**_versions(), "results": rows})


def _write(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------- the table


def summarize(runs):
    """``{(family, feature): {version: (status, frontends)}}`` from run JSONs (``FXVENE_MATRIX_OUT`` files);
    status: "pass" (every test of the cell that ran passed), "FAIL" (one failed) or "skipped" (none ran)."""
    out = {}
    for run in runs:
        v = run["transformers"]
        acc = {}
        for r in run["results"]:
            acc.setdefault((r["family"], r["feature"]), []).append(r)
        for key, rows in acc.items():
            outcomes = {r["outcome"] for r in rows}
            status = "FAIL" if outcomes - {"passed", "skipped"} else ("pass" if "passed" in outcomes else "skipped")
            fes = sorted({r["frontend"] for r in rows if r["frontend"] and r["outcome"] == "passed"})
            out.setdefault(key, {})[v] = (status, tuple(fes))
    return out


def _entry(version, status, frontends):
    text = version
    if status == "pass" and frontends:
        text += " " + "+".join(frontends)
    elif status != "pass":
        text += " " + status
    return text


def render(runs):
    """The markdown table (family x feature; a cell: ``4.47.1 hf_fx+export · 5.23.0 export``)."""
    summary = summarize(runs)
    families = sorted({f for f, _ in summary})
    features = list(FEATURES) + sorted({ft for _, ft in summary} - set(FEATURES))
    lines = ["| family | " + " | ".join(features) + " |", "|---|" + "---|" * len(features)]
    for fam in families:
        cells = []
        for feat in features:
            per = summary.get((fam, feat), {})
            cells.append(" · ".join(_entry(v, *per[v]) for v in sorted(per, key=_vkey)) or "–")
        lines.append(f"| {fam} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _vkey(v):
    return tuple(int(p) if p.isdigit() else p for p in v.split("."))


def parse_table(text):
    """``{(family, feature): {version: (status, frontends)}}`` back from a rendered table."""
    rows = [ln.strip() for ln in text.strip().splitlines() if ln.strip().startswith("|")]
    if len(rows) < 2:
        raise ValueError("no markdown table")
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    if header[0] != "family" or tuple(header[1 : 1 + len(FEATURES)]) != FEATURES:
        raise ValueError(f"table header must be family, {', '.join(FEATURES)}[, more features], got {header}")
    out = {}
    for row in rows[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        fam = cells[0]
        for feat, text in zip(header[1:], cells[1:]):
            if text in ("", "–"):
                continue
            for part in text.split(" · "):
                version, *rest = part.split(" ")
                word = rest[0] if rest else ""
                if word in ("FAIL", "skipped"):
                    out.setdefault((fam, feat), {})[version] = (word, ())
                else:
                    out.setdefault((fam, feat), {})[version] = ("pass", tuple(word.split("+")) if word else ())
    return out


def readme_table(readme_text):
    """The text between the support-matrix markers of the README (None when the markers are absent)."""
    if START not in readme_text or END not in readme_text:
        return None
    return readme_text.split(START, 1)[1].split(END, 1)[0]


def main(argv):
    if len(argv) < 2 or argv[0] != "render":
        print("usage: python tests/_matrix.py render OUT.json [OUT.json ...]", file=sys.stderr)
        return 2
    runs = []
    for path in argv[1:]:
        with open(path, encoding="utf-8") as f:
            runs.append(json.load(f))
    print(render(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
