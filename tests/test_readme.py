"""Every code snippet in README.md runs as written: each ```python block in a fresh interpreter,
each ```bash block with bash -e (this environment's `python` and `fxvene` first on PATH), offline,
in an empty directory. A block can be left out only with a visible reason: an HTML comment
``<!-- readme-test: skip (why) -->`` right above it (the set-up lines, which need the package
registry and which .ci/run runs)."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*\((.+?)\)\s*-->\s*$")
RUNNABLE = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash", "console": "bash"}


def snippets(text=None):
    """``(heading, language, code, skip_reason)`` of every fenced block with a language."""
    if text is None:
        with open(README, encoding="utf-8") as f:
            text = f.read()
    out = []
    for m in FENCE.finditer(text):
        lang = m.group(1).lower()
        if not lang:
            continue  # diagrams and file trees
        before = text[: m.start()]
        headings = re.findall(r"^#+ (.+)$", FENCE.sub("", before), re.M)  # not the comments inside code
        last_line = before.rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(last_line)
        out.append((headings[-1] if headings else "(top)", lang, m.group(2), skip.group(1) if skip else None))
    return out


# what each snippet prints when it does what the README says it does, by (heading, language)
BEYOND = "Beyond pyvene: sweeps, compile, generation, inspection"
EXPECT = {
    ("A 20-line example", "python"): [r"^ Paris (0\.9\d*|1\.0)", r"block_output"],
    (BEYOND, "python"): [
        r'CausalTraceResult: p\(" Seattle"\) after \'The Space Needle is in downtown\'',
        r"SweepResult: last-position probabilities of tokens \[\d+, \d+\]",
        r"^Today I feel happy",
    ],
    (BEYOND, "bash"): [r"^block_output\s+6\s", r"^frontend:\s+\w+", r"^wrote diff\.dot"],
}
DATASET = "Causal tracing over a dataset: ROME's averages, several processes, resumable runs"
EXPECT[(DATASET, "python")] = [
    r"^FactsTraceResult: causal traces of 3 of 4 records run; 1 skipped",
    r"ATE 0\.\d+",
    r"^skipped line 4 the model predicts",
]
EXPECT[(DATASET, "bash")] = [
    r"^run: 2 prompt traces \(2 traced now, 0 from before\)",
    r"^run: 2 prompt traces \(0 traced now, 2 from before\)",
    r"^run2: 2 prompt traces \(2 traced now, 0 from before\)",
]
METHODS = "Research methods as rewrites: attribution patching, path patching, ITI, IOI"
# several blocks of one language under one heading: (heading, language, k) is the k-th of them
EXPECT[(METHODS, "python", 0)] = [
    r"^AttributionResult: first-order estimates of patching",
    r"^L\d+H\d+ position \d+: estimate [-+]\d",
]
EXPECT[(METHODS, "python", 1)] = [r"^path patching: receivers \[\('q', 7, 3\), \('q', 10, 3\)\]"]
EXPECT[(METHODS, "python", 2)] = [r"^1 Today I feel (happy|glad)"]
CROSS = "Patching from a different site (fxvene extension)"
EXPECT[(CROSS, "python")] = [
    r"^source layer 0 -> layer 8: p\(Rome\)=0\.0\d\d p\(Paris\)=0\.8",
    r"^source layer 8 -> layer 8: p\(Rome\)=0\.00\d p\(Paris\)=0\.99",
    r"^\S+ -> \S+$",
    r"^nodes: \d+ -> \d+ ",
]
FILES = {
    (BEYOND, "python"): ["causal_trace.png", "steer_dir"],
    (BEYOND, "bash"): ["diff.dot"],
    (DATASET, "python"): ["aie.png", "aie_lines.png"],
    (DATASET, "bash"): ["run/summary.json", "run/aie.png", "run2/summary.json"],
}


def _cases():
    cases, seen = [], {}
    for i, (heading, lang, code, skip) in enumerate(snippets()):
        k = seen[(heading, lang)] = seen.get((heading, lang), -1) + 1
        marks = [pytest.mark.skip(reason=f"README marks it: {skip}")] if skip else []
        cases.append(pytest.param(heading, lang, k, code, id=f"{i}-{lang}-{heading[:30]}", marks=marks))
    return cases


def test_the_readme_has_snippets_and_every_language_is_runnable():
    found = snippets()
    assert sum(lang == "python" for _, lang, _, _ in found) >= 2
    for heading, lang, _code, _skip in found:
        assert lang in RUNNABLE, f"README block under {heading!r} has language {lang!r}, which this test cannot run"
    assert {(h, lang) for h, lang, *_ in found} >= {key[:2] for key in EXPECT}
    # only the set-up block is skipped, and it says why
    skipped = [(h, why) for h, _, _, why in found if why]
    assert [h for h, _ in skipped] == ["Set-up (two commands)"], skipped


def test_snippet_parser():
    text = (
        "# A\n```python\n# not a heading\nprint(1)\n```\n<!-- readme-test: skip (needs the network) -->\n```bash\npip x\n```\n"
        "```\ntree\n```\n## B\n```sh\necho hi\n```\n"
    )
    assert snippets(text) == [
        ("A", "python", "# not a heading\nprint(1)\n", None),
        ("A", "bash", "pip x\n", "needs the network"),
        ("B", "sh", "echo hi\n", None),
    ]


@pytest.mark.parametrize("heading,lang,k,code", _cases())
def test_readme_snippet_runs(heading, lang, k, code, tmp_path):
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        MPLBACKEND="Agg",
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"),
        TOKENIZERS_PARALLELISM="false",
        PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
    )
    env.pop("PYTHONSTARTUP", None)
    if RUNNABLE[lang] == "python":
        path = tmp_path / "snippet.py"
        path.write_text(code)
        cmd = [sys.executable, str(path)]
    else:
        path = tmp_path / "snippet.sh"
        path.write_text("set -euo pipefail\n" + code)
        cmd = ["bash", str(path)]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (
        f"README snippet under {heading!r} failed:\n{code}\n--- stdout\n{r.stdout[-3000:]}"
        f"\n--- stderr\n{r.stderr[-5000:]}"
    )
    for pattern in EXPECT.get((heading, lang, k), EXPECT.get((heading, lang), [])):
        assert re.search(pattern, r.stdout, re.M), (pattern, r.stdout[-3000:])
    for name in FILES.get((heading, lang), []):
        assert (tmp_path / name).exists(), name
