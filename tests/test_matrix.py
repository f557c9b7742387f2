"""The README's support matrix is generated from the tests' ``cell(family, feature)`` marks (tests/_matrix.py):
the renderer, the outcome recorder, and the README table against the marks the test files declare."""

import json
import os
import re
import subprocess
import sys

import _matrix as M
import pytest
import transformers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")


def _run(version, rows):
    return {
        "transformers": version,
        "torch": "2.13.0",
        "results": [
            dict(family=f, feature=ft, frontend=fe, test=f"t::{i}", outcome=o) for i, (f, ft, fe, o) in enumerate(rows)
        ],
    }


def test_render_and_parse_round_trip():
    r4 = _run(
        "4.47.1",
        [
            ("gpt_neo", "components", "hf_fx", "passed"),
            ("gpt_neo", "components", "export", "passed"),
            ("gpt_neo", "generate", None, "passed"),
            ("phi3", "cli", None, "failed"),
            ("phi3", "cli", None, "passed"),
            ("phi3", "pyvene_diff", None, "skipped"),
        ],
    )
    r5 = _run(
        "5.23.0",
        [
            ("gpt_neo", "components", "export", "passed"),
            ("gpt_neo", "generate", None, "passed"),
            ("qwen3", "generate", None, "passed"),
            ("phi3", "cli", None, "passed"),
        ],
    )
    table = M.render([r5, r4])
    lines = table.splitlines()
    assert lines[0] == "| family | " + " | ".join(M.FEATURES) + " |"
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.strip("|").split("|")[1:]] for ln in lines[2:]}
    assert sorted(rows) == ["gpt_neo", "phi3", "qwen3"]
    col = {f: i for i, f in enumerate(M.FEATURES)}
    assert rows["gpt_neo"][col["components"]] == "4.47.1 export+hf_fx · 5.23.0 export"
    assert rows["gpt_neo"][col["generate"]] == "4.47.1 · 5.23.0"
    assert rows["phi3"][col["cli"]] == "4.47.1 FAIL · 5.23.0"  # one failed test fails the cell
    assert rows["phi3"][col["pyvene_diff"]] == "4.47.1 skipped"
    assert rows["qwen3"][col["generate"]] == "5.23.0" and rows["qwen3"][col["cli"]] == "–"
    assert M.parse_table(table) == M.summarize([r4, r5])


def test_bad_cell_is_refused_and_other_features_follow_the_listed_ones():
    with pytest.raises(ValueError, match="two non-empty strings"):
        M.cell("gpt2", "")
    table = M.render([_run("5.23.0", [("gpt2", "derived_spec", None, "passed"), ("gpt2", "cli", None, "passed")])])
    assert table.splitlines()[0].endswith("| pyvene_diff | derived_spec |")
    assert M.parse_table(table)[("gpt2", "derived_spec")] == {"5.23.0": ("pass", ())}


def _marked_test_files():
    return sorted(
        os.path.join(TESTS, f)
        for f in os.listdir(TESTS)
        if f.startswith("test_")
        and f.endswith(".py")
        and re.search(r"^from _matrix import|^import _matrix", open(os.path.join(TESTS, f)).read(), re.M)
        and f != "test_matrix.py"
    )


def _whole_suite(config):
    """Whether this session collected every test file, unselected (``pytest`` or ``pytest tests``, no ``-k``,
    ``-m`` or ``--deselect``), as CI runs it: the cells the plugin recorded at collection are then the ones a
    ``--collect-only`` run of the marked files would write."""
    paths = {os.path.realpath(os.path.join(str(config.invocation_params.dir), a)) for a in config.args}
    unselected = not (config.option.keyword or config.option.markexpr or getattr(config.option, "deselect", None))
    return unselected and paths and paths <= {os.path.realpath(TESTS), os.path.realpath(ROOT)}


def _cells_of(rows):
    cells = {}
    for family, feature, frontend in rows:
        cells.setdefault((family, feature), set())
        if frontend:
            cells[(family, feature)].add(frontend)
    return cells


@pytest.fixture(scope="module")
def declared(request, tmp_path_factory):
    """The cells the test files declare on this line: what this session collected when it is the whole
    suite, else a --collect-only run of the files that use marks."""
    files = _marked_test_files()
    assert files, "no test file uses tests/_matrix.py's cell marks"
    collected = {nid.split("::")[0].rsplit("/", 1)[-1] for nid in M._ITEMS}
    if _whole_suite(request.config) and collected >= {os.path.basename(f) for f in files}:
        return _cells_of(cell for cells in M._ITEMS.values() for cell in cells)
    out = str(tmp_path_factory.mktemp("matrix") / "cells.json")
    env = dict(os.environ, FXVENE_MATRIX_CELLS=out)
    env.pop("FXVENE_MATRIX_OUT", None)
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    with open(out, encoding="utf-8") as f:
        data = json.load(f)
    return _cells_of((r["family"], r["feature"], r["frontend"]) for r in data["cells"])


def test_outcomes_are_recorded(tmp_path):
    """FXVENE_MATRIX_OUT: a run writes family, feature, outcome, frontend and the transformers version."""
    test = tmp_path / "test_cells.py"
    test.write_text(
        "import pytest\nfrom _matrix import cell\n"
        "@pytest.mark.parametrize('frontend', ['export'])\n"
        "@pytest.mark.parametrize('fam', [pytest.param('a', marks=cell('a', 'generate')),\n"
        "                                 pytest.param('b', marks=cell('b', 'cli'))])\n"
        "def test_x(fam, frontend):\n    assert fam == 'a'\n"
        "@pytest.mark.skip(reason='no')\n@pytest.mark.parametrize('fam', [pytest.param('a', marks=cell('a', 'cli'))])\n"
        "def test_y(fam):\n    pass\n"
        "def test_unmarked():\n    pass\n"
    )
    out = tmp_path / "out.json"
    env = dict(os.environ, FXVENE_MATRIX_OUT=str(out), PYTHONPATH=TESTS + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("FXVENE_MATRIX_CELLS", None)
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "_matrix", str(test)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    data = json.loads(out.read_text())
    assert data["transformers"] == transformers.__version__
    got = sorted((r["family"], r["feature"], r["frontend"], r["outcome"]) for r in data["results"])
    assert got == [
        ("a", "cli", None, "skipped"),
        ("a", "generate", "export", "passed"),
        ("b", "cli", "export", "failed"),
    ]


def test_readme_matrix_lists_exactly_the_declared_cells(declared):
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        table = M.readme_table(f.read())
    assert table is not None, f"README.md has no {M.START} ... {M.END} support-matrix table"
    listed = M.parse_table(table)
    version = transformers.__version__
    here = {key: per[version] for key, per in listed.items() if version in per}
    missing = sorted(set(declared) - set(here))
    extra = sorted(set(here) - set(declared))
    assert not missing and not extra, (
        f"README support matrix vs the tests' marks on transformers {version}: cells the tests declare but the "
        f"README does not list: {missing}; cells the README lists that no test declares: {extra}. Regenerate it: "
        "FXVENE_MATRIX_OUT=... on both lines, then python tests/_matrix.py render OUT_4.json OUT_5.json"
    )
    for key, (status, fes) in here.items():
        if status == "pass" and declared[key]:
            assert set(fes) == declared[key], (
                f"{key}: README lists frontends {fes}, the tests run {sorted(declared[key])}"
            )
