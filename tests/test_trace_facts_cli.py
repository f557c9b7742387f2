"""``fxvene trace-facts``: per-prompt files, resuming after SIGINT / SIGKILL, malformed records, the
progress bar. The uninterrupted run is the oracle of the interrupted-and-resumed one (bit for bit):
every part of the comparison runs with ``--threads 1`` (in ``ARGS``), in this process or a subprocess,
since another thread count may change the last bits. A resume under other settings is reported."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from _facts_cli import ARGS, ROOT, assert_same_runs, prompt_files, write_facts

from fxvene.cli import app as cli
from fxvene.cli.common import builtin_model
from fxvene.sweeps import datasets
from fxvene.sweeps.facts import load_facts


@pytest.fixture(scope="module")
def facts(tmp_path_factory):
    return write_facts(tmp_path_factory.mktemp("facts") / "facts.jsonl")


@pytest.fixture(scope="module")
def reference(facts, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ref") / "run")
    assert cli.main(["trace-facts", facts, "--out", out, "--batch-prompts", "1", *ARGS]) == 0
    return out


def test_run_directory(reference, capsys):
    files = prompt_files(reference)
    assert len(files) == 16 and files[0] == "000000.json"  # 8 prompts (records 2 and 5 are malformed)
    rec = json.load(open(os.path.join(reference, "prompts", "000000.json")))
    assert rec["line"] == 1 and rec["n_samples"] == 2 and rec["window"] == 2 and rec["rank"] == 0
    assert rec["session"] == 0
    summary = json.load(open(os.path.join(reference, "summary.json")))
    assert summary["n_records"] == 10 and summary["n_traced"] == 8
    assert [m["line"] for m in summary["malformed"]] == [3, 6]
    assert (
        "missing field" in summary["malformed"][0]["reason"] and "not valid JSON" in summary["malformed"][1]["reason"]
    )
    assert summary["summary"]["classes"][0] == "first subject token" and summary["summary"]["n_prompts"] == 8
    run = json.load(open(os.path.join(reference, "run.json")))
    assert run["options"]["samples"] == 2 and len(run["facts_sha256"]) == 64 and run["resumes"] == []
    st = run["settings"]
    assert st["threads"] == 1 and st["device"].startswith("cpu") and st["torch"] == torch.__version__
    assert set(st) == {"threads", "device", "torch", "transformers", "fxvene", "python"}


@pytest.mark.parametrize("sig, after", [(signal.SIGINT, 3), (signal.SIGKILL, 5)], ids=["SIGINT", "SIGKILL"])
def test_killed_run_resumes_to_the_uninterrupted_result(facts, reference, tmp_path, capsys, sig, after):
    out = str(tmp_path / "run")
    env = dict(os.environ, FXVENE_FACTS_STALL_AFTER=str(after))  # stall with the next prompt in flight
    p = subprocess.Popen(
        [sys.executable, "-m", "fxvene", "trace-facts", facts, "--out", out, "--batch-prompts", "1", *ARGS],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as a user's terminal delivers it: a test session launched in the background (CI runs its two
        # transformers lines with `&`) has SIGINT ignored, and a child would inherit that and never stop
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 240
    try:
        while True:  # wait for `after` finished prompts and one half-written (data, no record)
            names = prompt_files(out) if os.path.isdir(os.path.join(out, "prompts")) else []
            stems = {n.rsplit(".", 1)[0] for n in names}
            if sum(n.endswith(".json") for n in names) == after and len(stems) == after + 1:
                break
            assert p.poll() is None, p.communicate()[1]
            assert time.monotonic() < deadline, "the run did not reach the stall"
            time.sleep(0.05)
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL), err
    if sig == signal.SIGINT:
        assert "interrupted" in err and "Traceback" not in err
    assert sum(n.endswith(".json") for n in prompt_files(out)) == after
    assert not os.path.exists(os.path.join(out, "summary.json"))
    capsys.readouterr()
    resume = ["trace-facts", facts, "--out", out, "--batch-prompts", "1", *ARGS]
    if sig == signal.SIGINT:
        resume.remove("--no-progress")  # the bar: prompts done / total and the time left
    assert cli.main(resume) == 0
    stdout, err = capsys.readouterr()
    assert f"resuming {out}: {after} prompts already done" in err and "warning" not in err  # same settings
    assert f"{out}: 8 prompt traces ({8 - after} traced now, {after} from before)" in stdout
    if sig == signal.SIGINT:
        assert re.search(rf"{8 - after}/{8 - after} \[\d\d:\d\d<\d\d:\d\d", err), err
    assert_same_runs(reference, out, ignore=("session",))
    sessions = [json.load(open(os.path.join(out, "prompts", n)))["session"] for n in prompt_files(out) if ".json" in n]
    assert sorted(sessions) == [0] * after + [1] * (8 - after)
    run = json.load(open(os.path.join(out, "run.json")))
    assert [(r["session"], r["prompts_done_before"]) for r in run["resumes"]] == [(1, after)]
    assert run["resumes"][0]["settings"] == run["settings"]


def _interrupted_copy(reference, out, stems):
    """A copy of the finished ``reference`` run whose prompts ``stems`` are not done (no JSON record)."""
    shutil.copytree(reference, out)
    for s in stems:
        os.remove(os.path.join(out, "prompts", f"{s}.json"))
    os.remove(os.path.join(out, "summary.json"))


def test_resume_under_other_settings_is_reported(facts, reference, tmp_path, capsys):
    """Another thread count or batch size (rounding only) and another library version: the resume
    goes on, says what differs (old -> new) in one line, and records the session."""
    out = str(tmp_path / "run")
    _interrupted_copy(reference, out, ["000007", "000009"])
    capsys.readouterr()
    args = [*ARGS[: ARGS.index("--threads")], "--threads", "2", *ARGS[ARGS.index("--threads") + 2 :]]
    assert torch.get_num_threads() == 1
    assert cli.main(["trace-facts", facts, "--out", out, "--batch-prompts", "2", *args]) == 0
    assert torch.get_num_threads() == 1  # the caller's count again
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if "warning" in ln]
    assert "(threads 1 -> 2, batch_prompts 1 -> 2)" in line and "in the last bits" in line, line
    assert "--threads 1 matches it" in line and len(line) < 300
    run = json.load(open(os.path.join(out, "run.json")))
    assert run["settings"]["threads"] == 1 and run["options"]["batch_prompts"] == 1  # the first run's
    assert [(r["session"], r["settings"]["threads"], r["options"]["batch_prompts"]) for r in run["resumes"]] == [
        (1, 2, 2)
    ]
    assert json.load(open(os.path.join(out, "prompts", "000009.json")))["session"] == 1
    assert json.load(open(os.path.join(out, "summary.json")))["n_traced"] == 8

    run["settings"]["transformers"] = "0.0.1"  # as if the first run had another transformers
    json.dump(run, open(os.path.join(out, "run.json"), "w"))
    for stem in ("000007", "000009"):  # the remedy: retrace the other settings' prompts under the first run's
        os.remove(os.path.join(out, "prompts", f"{stem}.json"))
    assert cli.main(["trace-facts", facts, "--out", out, "--batch-prompts", "1", *ARGS]) == 0
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert "(transformers 0.0.1 -> " in line and "or more if a version changed the code" in line, line
    assert "threads" not in line and len(line) < 300
    assert json.load(open(os.path.join(out, "prompts", "000009.json")))["session"] == 2
    assert [r["session"] for r in json.load(open(os.path.join(out, "run.json")))["resumes"]] == [1, 2]
    assert_same_runs(reference, out, ignore=("session",))  # --threads 1 and batches of 1 again: the same bits


def test_resumed_batches_are_the_uninterrupted_runs(facts, monkeypatch):
    """A batch with some prompts done runs whole, as in the uninterrupted run (a prompt's bits may
    depend on its batch), and gives the same bits for the prompts not done."""
    model = builtin_model("gpt2-tiny")
    loaded = load_facts(facts, None, vocab_size=50)
    ran = []
    trace_batch = datasets._trace_batch

    def spy(eng, m, batch, *rest):  # which prompts share a batch
        ran.append([f.index for f in batch])
        return trace_batch(eng, m, batch, *rest)

    monkeypatch.setattr(datasets, "_trace_batch", spy)
    kw = dict(noise_level=0.5, n_samples=2, window=2, only_correct=False, batch_prompts=2, progress=False)
    full = datasets.trace_facts(model, loaded, **kw)
    batches = ran[:]
    ran.clear()
    assert batches == [[4, 8], [0, 7], [9], [1, 3], [6]]  # by length, then record order
    part = datasets.trace_facts(model, loaded, done={4, 8, 0, 3}, **kw)
    assert ran == [[0, 7], [9], [1, 3], [6]]  # [0, 7] and [1, 3] whole, though 0 and 3 are done
    by_index = {f.index: r for f, r in zip(full.facts, full.results)}
    assert [f.index for f in part.facts] == [1, 6, 7, 9]
    for f, r in zip(part.facts, part.results):
        assert torch.equal(r.probs, by_index[f.index].probs) and r.clean_prob == by_index[f.index].clean_prob


def test_run_json_checks(tmp_path):
    """run.json against a new session: refusals name what differs; nothing done yet: a fresh start under
    the new settings; a run.json of an older fxvene (no settings): the resume says it cannot check."""
    from fxvene.cli.trace_facts import _start_run

    out = str(tmp_path)
    st = {"threads": 4, "device": "cpu AVX2", "torch": "2", "transformers": "5", "fxvene": "0", "python": "3"}
    info = {
        "facts": "f",
        "facts_sha256": "a" * 64,
        "model": "m",
        "options": {"seed": 1, "max_rows": None},
        "settings": st,
    }
    assert _start_run(out, info, 0) == (None, None, 0)
    err, _, _ = _start_run(out, dict(info, facts_sha256="b" * 64), 3)
    assert "another facts file (sha256 aaaaaaaaaaaa..., now bbbbbbbbbbbb...)" in err and len(err) < 300
    err, _, _ = _start_run(out, dict(info, model="m2"), 3)
    assert "another model ('m', now 'm2'); use a new --out, or the same --model to resume" in err
    new = dict(info, settings=dict(st, threads=1), options={"seed": 1, "max_rows": 8})
    assert _start_run(out, new, 0) == (None, None, 0)  # nothing done: the run starts afresh
    assert json.load(open(tmp_path / "run.json"))["settings"]["threads"] == 1
    _, warning, session = _start_run(out, dict(new, settings=st), 2)
    assert session == 1 and "(threads 1 -> 4): " in warning and "--threads 1 matches it" in warning
    old = json.load(open(tmp_path / "run.json"))
    del old["settings"], old["resumes"]
    json.dump(old, open(tmp_path / "run.json", "w"))
    _, warning, session = _start_run(out, new, 2)
    assert session == 1 and "no settings of its first run (an older fxvene)" in warning and len(warning) < 300


def test_rerun_with_other_options_is_refused(facts, reference, capsys):
    args = [a if a != "2" else "3" for a in ARGS]
    assert cli.main(["trace-facts", facts, "--out", reference, "--batch-prompts", "1", *args]) == 1
    err = capsys.readouterr().err
    assert "other options (samples 2 -> 3, window 2 -> 3)" in err and "use a new --out" in err
    assert len(err.strip().splitlines()) == 1 and len(err) < 300


def test_argument_errors_before_anything_loads(tmp_path, facts):
    code = (
        f"import sys\nfrom fxvene.cli.app import main\n"
        f"sys.exit(main(['trace-facts', {str(tmp_path / 'nope.jsonl')!r}, '--model', 'gpt2-tiny', "
        f"'--out', {str(tmp_path / 'o')!r}]))"
    )
    prog = code + "\n"
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, json\ntry:\n"
            + "".join(f"    {ln}\n" for ln in prog.splitlines())
            + "except SystemExit as e:\n    print('EXIT', e.code)\nprint('MODULES', json.dumps(sorted(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    mods = set(json.loads(r.stdout.rsplit("MODULES ", 1)[1]))
    assert "EXIT 1" in r.stdout and "no such file" in r.stderr
    assert "torch" not in mods and "transformers" not in mods
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, json\nfrom fxvene.cli.app import main\ntry:\n"
            "    main(['trace-facts', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('MODULES', json.dumps(sorted(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert "--memory-budget" in r.stdout and "torchrun" in r.stdout
    mods = set(json.loads(r.stdout.rsplit("MODULES ", 1)[1]))
    assert "torch" not in mods and "transformers" not in mods
    with pytest.raises(SystemExit):
        cli.main(["trace-facts", facts, "--model", "gpt2-tiny", "--out", str(tmp_path / "o"), "--samples", "x"])
    assert (
        cli.main(["trace-facts", facts, "--model", "gpt2-tiny", "--out", str(tmp_path / "o"), "--noise", "loud"]) == 1
    )
    assert cli.main(["trace-facts", facts, "--model", "gpt2-tiny", "--out", str(tmp_path / "o"), "--threads", "0"]) == 1
    assert not os.path.exists(tmp_path / "o")
