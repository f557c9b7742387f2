"""Every code snippet in README.md and in the documentation (docs/**/*.md) runs as written, offline.

Each page (README.md, then every docs page in path order) runs in its own empty directory, its blocks in
the order they appear: the ```python blocks of a page in one interpreter, one after the other, in one
namespace (a later block may use what an earlier one defined, as a reader running the page would), each
```bash block with bash -e in the same directory (this environment's `python` and `fxvene` first on PATH),
so it sees the files the page's earlier blocks wrote. A block can be left out only with a visible reason:
an HTML comment ``<!-- readme-test: skip (why) -->`` right above it. In the README that is only the
set-up lines (they need the package registry, and .ci/run runs them); in docs/ a reason must say that the
block needs the network (or the package registry), a GPU or torchrun across machines.

Test ids name the page and the heading above the block (``docs/guides/patching.md::A grid of patches``),
with ``::2``, ``::3`` ... for further blocks under one heading. Running one block (``-k``) runs the
page's earlier blocks first, so its namespace and files are what the page gives it."""

import json
import os
import queue
import re
import subprocess
import sys
import threading
import unicodedata

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
DOCS = os.path.join(ROOT, "docs")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*\((.+?)\)\s*-->\s*$")
RUNNABLE = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash", "console": "bash"}
# what a docs page may skip a block for: the machine CI runs on has none of these
DOCS_SKIP_REASONS = ("network", "package registry", "GPU", "torchrun")
TIMEOUT = 900  # seconds, per block


def pages():
    """README.md, then every page of docs/ (paths relative to the repository, ``/``-separated)."""
    found = []
    for base, _dirs, files in os.walk(DOCS):
        found += [os.path.relpath(os.path.join(base, f), ROOT).replace(os.sep, "/") for f in files if f.endswith(".md")]
    return ["README.md", *sorted(found)]


def read(page):
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        return f.read()


def snippets(text=None):
    """``(heading, language, code, skip_reason)`` of every fenced block with a language."""
    if text is None:
        text = read("README.md")
    out = []
    for m in FENCE.finditer(text):
        lang = m.group(1).lower()
        if not lang:
            continue  # diagrams, file trees and printed output
        before = text[: m.start()]
        headings = re.findall(r"^#+ (.+)$", FENCE.sub("", before), re.M)  # not the comments inside code
        last_line = before.rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(last_line)
        out.append((headings[-1].strip() if headings else "(top)", lang, m.group(2), skip.group(1) if skip else None))
    return out


def _ascii(text):
    """pytest escapes non-ASCII characters in test ids; spell them out instead (× -> x, — -> -)."""
    text = text.replace("×", "x").replace("—", "-").replace("–", "-").replace("→", "->")
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def blocks():
    """``(page, index on the page, heading, language, k, code, skip_reason, test id)`` of every block;
    ``k`` counts the blocks of one language under one heading of a page (0 for the first)."""
    out = []
    for page in pages():
        seen, per_heading = {}, {}
        for i, (heading, lang, code, skip) in enumerate(snippets(read(page))):
            k = seen[(heading, lang)] = seen.get((heading, lang), -1) + 1
            n = per_heading[heading] = per_heading.get(heading, 0) + 1
            test_id = _ascii(f"{page}::{heading}" + (f"::{n}" if n > 1 else ""))
            out.append((page, i, heading, lang, k, code, skip, test_id))
    return out


# what a block prints when it does what its page says it does, by (page, heading, language) or, where one
# heading has several blocks of a language, (page, heading, language, k)
EXPECT = {
    ("README.md", "A 20-line example", "python"): [r"^ Paris (0\.9\d*|1\.0)", r"block_output"],
    ("docs/guides/causal-tracing.md", "One prompt", "python"): [
        r'CausalTraceResult: p\(" Seattle"\) after \'The Space Needle is in downtown\'',
    ],
    ("docs/guides/patching.md", "A grid of patches", "python"): [
        r"SweepResult: last-position probabilities of tokens \[\d+, \d+\]",
    ],
    ("docs/guides/steering.md", "Steering during generation", "python"): [r"^Today I feel happy"],
    ("docs/guides/inspection.md", "On the command line", "bash"): [
        r"^block_output\s+6\s",
        r"^frontend:\s+\w+",
        r"^wrote diff\.dot",
    ],
}
DATASET = "docs/guides/datasets.md"
EXPECT[(DATASET, "In Python", "python")] = [
    r"^FactsTraceResult: causal traces of 3 of 4 records run; 1 skipped",
    r"ATE 0\.\d+",
    r"^skipped line 4 the model predicts",
]
EXPECT[(DATASET, "From the command line", "bash")] = [
    r"^run: 2 prompt traces \(2 traced now, 0 from before\)",
    r"^run: 2 prompt traces \(0 traced now, 2 from before\)",
    r"^run2: 2 prompt traces \(2 traced now, 0 from before\)",
]
METHODS = "docs/research-methods.md"
EXPECT[(METHODS, "Attribution patching", "python")] = [
    r"^AttributionResult: first-order estimates of patching",
    r"^L\d+H\d+ position \d+: estimate [-+]\d",
]
EXPECT[(METHODS, "Path patching", "python")] = [r"^path patching: receivers \[\('q', 7, 3\), \('q', 10, 3\)\]"]
EXPECT[(METHODS, "ITI", "python")] = [r"^1 Today I feel (happy|glad)"]
EXPECT[("docs/beyond-pyvene.md", "Patching from a different site", "python")] = [
    r"^source layer 0 -> layer 8: p\(Rome\)=0\.0\d\d p\(Paris\)=0\.8",
    r"^source layer 8 -> layer 8: p\(Rome\)=0\.00\d p\(Paris\)=0\.99",
    r"^\S+ -> \S+$",
    r"^nodes: \d+ -> \d+ ",
]
EXPECT[("docs/guides/das.md", "A rotation that learns", "python")] = [r"^interchange accuracy: (0\.9\d|1\.00)"]
# files a block leaves in its page's directory
FILES = {
    ("docs/guides/causal-tracing.md", "One prompt", "python"): ["causal_trace.png"],
    ("docs/guides/steering.md", "Saving and loading", "python"): ["steer_dir"],
    ("docs/guides/inspection.md", "On the command line", "bash"): ["diff.dot"],
    (DATASET, "In Python", "python"): ["aie.png", "aie_lines.png"],
    (DATASET, "From the command line", "bash"): ["run/summary.json", "run/aie.png", "run2/summary.json"],
}


# ---------------------------------------------------------------- running a page's blocks in order

# The interpreter a page's python blocks share: it reads one JSON request per line on stdin (the block's
# source, a file name for tracebacks, the files its stdout and stderr go to), runs the block in __main__'s
# namespace with file descriptors 1 and 2 on those files, and answers on its own stdout.
WORKER = r"""
def _serve():
    import json, linecache, os, sys, traceback

    requests = sys.stdin
    answers = os.fdopen(os.dup(1), "w")
    sys.stdin = open(os.devnull)
    namespace = sys.modules["__main__"].__dict__
    for name in [n for n in namespace if not n.startswith("__")]:
        del namespace[name]  # the blocks see an empty script's globals (not this function)
    for line in requests:
        req = json.loads(line)
        sys.stdout.flush(); sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        out = os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        err = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(out, 1); os.dup2(err, 2); os.close(out); os.close(err)
        ok = True
        try:
            src = req["code"]
            linecache.cache[req["name"]] = (len(src), None, src.splitlines(True), req["name"])
            exec(compile(src, req["name"], "exec"), namespace)
        except SystemExit as e:
            ok = e.code in (None, 0)
            if not ok:
                print(f"SystemExit({e.code!r})", file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            ok = False
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os.dup2(saved[0], 1); os.dup2(saved[1], 2); os.close(saved[0]); os.close(saved[1])
        answers.write(json.dumps({"ok": ok}) + "\n"); answers.flush()

if __name__ == "__main__":
    _serve()
"""


def _env():
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        MPLBACKEND="Agg",
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"),
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
    )
    env.pop("PYTHONSTARTUP", None)
    return env


class Page:
    """One page's directory, its python interpreter (started on the first python block) and how far it ran."""

    def __init__(self, page, directory):
        self.page, self.dir = page, directory
        self.scratch = os.path.join(directory, ".blocks")  # the blocks' sources and outputs, out of the page's way
        os.makedirs(self.scratch)
        self.proc = self.answers = None
        self.next = 0  # index (on the page) of the next block to run
        self.failed = None  # the first block that failed (later blocks still run, and name it if they fail)

    def _python(self, name, code, out, err):
        if self.proc is None:
            worker = os.path.join(self.scratch, "worker.py")
            with open(worker, "w") as f:
                f.write(WORKER)
            self.proc = subprocess.Popen(
                [sys.executable, worker],
                cwd=self.dir,
                env=_env(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            self.answers = queue.Queue()
            threading.Thread(
                target=lambda p=self.proc, q=self.answers: [q.put(line) for line in p.stdout] + [q.put("")], daemon=True
            ).start()
        self.proc.stdin.write(json.dumps({"code": code, "name": name, "stdout": out, "stderr": err}) + "\n")
        self.proc.stdin.flush()
        try:
            answer = self.answers.get(timeout=TIMEOUT)
        except queue.Empty:
            self.close()
            return 124
        if not answer:  # the interpreter died (a crash, or killed)
            rc = self.proc.wait()
            self.proc = None
            return rc or 1
        return 0 if json.loads(answer)["ok"] else 1

    def run(self, index, lang, code):
        """Run block ``index`` of the page: ``(returncode, stdout, stderr)``."""
        name = f"{self.page}:block{index}"
        out, err = (os.path.join(self.scratch, f"{index}.{s}") for s in ("out", "err"))
        if RUNNABLE[lang] == "python":
            rc = self._python(name, code, out, err)
        else:
            script = os.path.join(self.scratch, f"{index}.sh")
            with open(script, "w") as f:
                f.write("set -euo pipefail\n" + code)
            with open(out, "w") as o, open(err, "w") as e:
                try:
                    rc = subprocess.run(
                        ["bash", script], cwd=self.dir, env=_env(), stdout=o, stderr=e, timeout=TIMEOUT
                    ).returncode
                except subprocess.TimeoutExpired:
                    rc = 124
        self.next = index + 1
        with open(out, encoding="utf-8", errors="replace") as o, open(err, encoding="utf-8", errors="replace") as e:
            return rc, o.read(), e.read()

    def close(self):
        if self.proc is not None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


@pytest.fixture(scope="module")
def page_runs(tmp_path_factory):
    runs = {}
    yield runs, tmp_path_factory
    for run in runs.values():
        run.close()


BLOCKS = blocks()


def _cases():
    cases = []
    for page, i, heading, lang, k, code, skip, test_id in BLOCKS:
        where = "README" if page == "README.md" else page
        marks = [pytest.mark.skip(reason=f"{where} marks it: {skip}")] if skip else []
        cases.append(pytest.param(page, i, heading, lang, k, code, id=test_id, marks=marks))
    return cases


@pytest.mark.parametrize("page,index,heading,lang,k,code", _cases())
def test_snippet_runs(page, index, heading, lang, k, code, page_runs):
    runs, factory = page_runs
    run = runs.get(page)
    if run is None or run.next > index:  # first block of the page here, or the page is run again
        if run is not None:
            run.close()
        run = runs[page] = Page(page, str(factory.mktemp(re.sub(r"\W+", "_", page))))
    # the page's earlier blocks first, where they have not run (a block selected on its own with -k)
    for p, i, _h, lg, _k, c, skip, test_id in BLOCKS:
        if p == page and run.next <= i < index and not skip:
            rc, out, err = run.run(i, lg, c)
            if rc != 0 and run.failed is None:
                run.failed = (test_id, rc, out, err)
    earlier = run.failed  # a block of this page that failed before: what this one may be missing
    rc, out, err = run.run(index, lang, code)
    if rc != 0 and run.failed is None:
        run.failed = (next(b[-1] for b in BLOCKS if b[:2] == (page, index)), rc, out, err)
    if not any(p == page and i > index for p, i, *_ in BLOCKS):
        run.close()  # the page's last block
    note = (
        ""
        if earlier is None
        else f"\n(an earlier block of the page failed first: {earlier[0]}, exit status {earlier[1]})"
    )
    assert rc == 0, (
        f"{page}: block under {heading!r} failed (exit status {rc}):\n{code}\n--- stdout\n{out[-3000:]}"
        f"\n--- stderr\n{err[-5000:]}{note}"
    )
    for pattern in EXPECT.get((page, heading, lang, k), EXPECT.get((page, heading, lang), [])):
        assert re.search(pattern, out, re.M), (pattern, out[-3000:])
    for name in FILES.get((page, heading, lang), []):
        assert os.path.exists(os.path.join(run.dir, name)), name


# ---------------------------------------------------------------- what is collected


def test_the_pages_have_snippets_and_every_language_is_runnable():
    found = {page: snippets(read(page)) for page in pages()}
    assert sum(lang == "python" for _, lang, _, _ in found["README.md"]) >= 1
    assert len(found) > 10, sorted(found)  # the docs pages are collected
    for page, blocks_ in found.items():
        for heading, lang, _code, _skip in blocks_:
            assert lang in RUNNABLE, (
                f"{page}: block under {heading!r} has language {lang!r}, which this test cannot run"
            )
    have = {(page, h, lang) for page, blocks_ in found.items() for h, lang, *_ in blocks_}
    assert have >= {key[:3] for key in (*EXPECT, *FILES)}, sorted({key[:3] for key in (*EXPECT, *FILES)} - have)
    # the README skips only its set-up block; a docs page skips only what CI's machine cannot run, saying why
    assert [h for h, _, _, why in found["README.md"] if why] == ["Set-up (two commands)"]
    for page, blocks_ in found.items():
        if page != "README.md":
            for h, _, _, why in blocks_:
                assert why is None or any(r in why for r in DOCS_SKIP_REASONS), (page, h, why)


def test_test_ids_are_unique_and_readable():
    ids = [b[-1] for b in BLOCKS]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    assert all(i.isascii() and "::" in i for i in ids), ids
    assert "README.md::A 20-line example" in ids


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


def test_a_page_shares_one_namespace_and_one_directory(tmp_path):
    run = Page("docs/example.md", str(tmp_path))
    try:
        assert run.run(0, "python", "x = 41\nopen('made.txt', 'w').write('hi')\n")[0] == 0
        rc, out, _ = run.run(1, "python", "print(x + 1)\n")
        assert (rc, out) == (0, "42\n")
        rc, out, _ = run.run(2, "bash", "cat made.txt\n")
        assert (rc, out) == (0, "hi")
        rc, _, err = run.run(3, "python", "raise ValueError('boom')\n")
        assert rc == 1 and "ValueError: boom" in err and "docs/example.md:block3" in err
        assert run.run(4, "python", "print(x)\n")[:2] == (0, "41\n")  # the interpreter lives on after an error
        rc, _, err = run.run(5, "python", "os.getcwd()\n")  # nothing the harness imported leaks into the blocks
        assert rc == 1 and "NameError" in err
    finally:
        run.close()
