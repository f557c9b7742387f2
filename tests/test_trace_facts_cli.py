"""``fxvene trace-facts``: per-prompt files, resuming after SIGINT / SIGKILL, malformed records, the
progress bar. The uninterrupted run is the oracle of the interrupted-and-resumed one (bit for bit)."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from _facts_cli import ARGS, ROOT, assert_same_runs, prompt_files, write_facts

from fxvene import cli


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
    summary = json.load(open(os.path.join(reference, "summary.json")))
    assert summary["n_records"] == 10 and summary["n_traced"] == 8
    assert [m["line"] for m in summary["malformed"]] == [3, 6]
    assert (
        "missing field" in summary["malformed"][0]["reason"] and "not valid JSON" in summary["malformed"][1]["reason"]
    )
    assert summary["summary"]["classes"][0] == "first subject token" and summary["summary"]["n_prompts"] == 8
    run = json.load(open(os.path.join(reference, "run.json")))
    assert run["options"]["samples"] == 2 and len(run["facts_sha256"]) == 64


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
    assert f"resuming {out}: {after} prompts already done" in err
    assert f"{out}: 8 prompt traces ({8 - after} traced now, {after} from before)" in stdout
    if sig == signal.SIGINT:
        assert re.search(rf"{8 - after}/{8 - after} \[\d\d:\d\d<\d\d:\d\d", err), err
    assert_same_runs(reference, out)


def test_rerun_with_other_options_is_refused(facts, reference, capsys):
    args = [a if a != "2" else "3" for a in ARGS]
    assert cli.main(["trace-facts", facts, "--out", reference, "--batch-prompts", "1", *args]) == 1
    err = capsys.readouterr().err
    assert "other options" in err and "use a new --out" in err and len(err.strip().splitlines()) == 1


def test_argument_errors_before_anything_loads(tmp_path, facts):
    code = (
        f"import sys\nfrom fxvene.cli import main\n"
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
            "import sys, json\nfrom fxvene.cli import main\ntry:\n"
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
