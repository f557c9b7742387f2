"""The ``fxvene`` command, called in-process (``fxvene.cli.app.main``) on built-in tiny models."""

import json
import os
import re
import shutil

import pytest
from _matrix import cell
from conftest import frontends, make_gpt2

from fxvene.cli import app as cli
from fxvene.zoo.demo import demo_model_path

GPT2_COMPONENTS = [
    "block_input",
    "block_output",
    "mlp_activation",
    "mlp_output",
    "mlp_input",
    "attention_value_output",
    "head_attention_value_output",
    "attention_weight",
    "attention_output",
    "attention_input",
    "query_output",
    "key_output",
    "value_output",
    "head_query_output",
    "head_key_output",
    "head_value_output",
]


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err):
    """The one line an error prints; its message (after ``fxvene VERB: error: ``) fits in 300 characters."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert len(lines[0].split(": error: ", 1)[-1]) <= 300, lines[0]
    return lines[0]


@pytest.mark.parametrize("argv", [["--help"], ["components", "--help"], ["diff", "--help"], ["trace", "--help"]])
def test_help_exits_zero(capsys, argv):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fxvene")
    if argv[0] != "--help":
        assert "gpt2-tiny" in out and "--tracer" in out


@cell("gpt2", "cli")
def test_components(capsys):
    code, out, err = run(capsys, "components", "gpt2-tiny", "--layer", "2")
    assert code == 0, err
    lines = out.splitlines()
    assert "GPT2LMHeadModel" in lines[0] and "family gpt2, 4 layers" in lines[0]
    assert lines[1].split()[:3] == ["component", "layer", "node"]
    body = [ln.split() for ln in lines[3:] if ln.strip()]
    assert [b[0] for b in body] == GPT2_COMPONENTS and all(b[1] == "2" for b in body)
    assert {b[3] for b in body} >= {"transformer.h.2", "transformer.h.2.attn.c_attn", "transformer.h.2.mlp.act"}
    row = next(ln for ln in lines if ln.startswith("head_query_output"))
    assert "(2, 8, 72)" in row and "(2, 4, 8, 6)" in row  # fused qkv node; 4 heads of 6


def test_components_json_all_layers(capsys):
    code, out, err = run(
        capsys, "components", "gpt2-tiny", "--json", "--component", "block_output", "--component", "head_key_output"
    )
    assert code == 0, err
    rows = json.loads(out)
    assert [(r["component"], r["layer"]) for r in rows] == [
        (c, l) for c in ("block_output", "head_key_output") for l in range(4)
    ]
    assert all(r["shape"][-1] in (24, 72) and r["error"] is None for r in rows)
    assert all(r["frontend"] in frontends() for r in rows)


@cell("gpt2", "cli")
def test_trace(capsys):
    code, out, err = run(capsys, "trace", "gpt2-tiny")
    assert code == 0, err
    fields = dict(re.findall(r"^(\w[\w ]*):\s+(.*)$", out, re.M))
    assert fields["frontend"].split()[0] == frontends()[0]  # auto: hf_fx where transformers has it
    n = int(fields["nodes"].split()[0])
    counts = dict((k, int(v)) for k, v in re.findall(r"(\w+) (\d+)", fields["nodes"].split("(", 1)[1]))
    assert n == sum(counts.values()) and counts["placeholder"] == 2 and counts["output"] == 1
    assert re.search(r"\d+\.\d+ s", fields["trace time"])
    assert "GPT2LMHeadModel (gpt2-tiny), 4 layers" in fields["model"]


def test_diff_with_dot(capsys, tmp_path):
    config = {
        "representations": [
            {"layer": 1, "component": "block_output", "intervention_type": "VanillaIntervention"},
            {
                "layer": 2,
                "component": "mlp_output",
                "intervention_type": "pyvene.models.interventions.CollectIntervention",
            },
        ],
        "mode": "parallel",
    }
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config))
    dot = tmp_path / "diff.dot"
    argv = ["diff", "gpt2-tiny", "--config", str(cfg), "--dot", str(dot)]
    if shutil.which("dot"):
        argv += ["--render", "svg"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert "VanillaIntervention" in out and "CollectIntervention" in out  # the sites table
    assert "intervened base forward" in out and "source run of group 0 (truncated)" in out
    assert re.search(r"^\+fxv_site_0 = self\.fxv_site_0\(\w+, fxv_src_0, fxv_loc_0\)", out, re.M)
    assert re.search(r"^\+return \(\w+, fxv_collect_1\)$", out, re.M)
    assert re.search(r"^- \.\.\. \d+ more removed lines", out, re.M)  # the truncated source run, shortened
    assert "outputs added: fxv_collect_1" in out
    text = dot.read_text()
    assert text.startswith("digraph") and "subgraph cluster_" in text and '"fxv_site_0"' in text
    src = tmp_path / "diff.source0.dot"
    assert src.exists() and "removed::" in src.read_text()
    if shutil.which("dot"):
        assert "<svg" in (tmp_path / "diff.svg").read_text()
    # only the base graph, as generated code
    code, out, err = run(capsys, "diff", "gpt2-tiny", "--config", str(cfg), "--graph", "base", "--code")
    assert code == 0, err
    assert "+    fxv_site_0 = self.fxv_site_0(" in out and "source run" not in out


def test_local_model_directory(capsys, tmp_path):
    model = make_gpt2(n_layer=2)
    model.save_pretrained(tmp_path, safe_serialization=True)
    # loaded as from_pretrained(path) does (SDPA attention on transformers 4.x): tracer auto picks export there
    code, out, err = run(
        capsys, "components", str(tmp_path), "--layer", "1", "--component", "block_output", "--tracer", "auto"
    )
    assert code == 0, err
    assert "family gpt2, 2 layers" in out and re.search(r"^block_output\s+1\s+\w+\s+transformer\.h\.1\s", out, re.M)


def test_demo_model(capsys):
    have = os.path.isfile(os.path.join(demo_model_path(), "config.json"))
    code, out, err = run(capsys, "components", "demo", "--layer", "0", "--component", "block_output")
    if have:
        assert code == 0, err
        assert "block_output" in out
    else:
        assert code == 1
        assert "demo model is not installed" in one_line_error(err)


def test_builtin_shapes(capsys):
    small = cli.builtin_config("gpt2-small-shape")
    assert (small.n_layer, small.n_embd, small.n_head, small.vocab_size) == (12, 768, 12, 50257)
    llama = cli.builtin_config("llama-tiny")
    assert llama.num_key_value_heads < llama.num_attention_heads
    assert set(cli.BUILTINS) >= {"gpt2-tiny", "llama-tiny", "gpt2-small-shape", "demo"}
    code, out, err = run(capsys, "components", "llama-tiny", "--layer", "0", "--component", "head_value_output")
    assert code == 0, err
    assert re.search(
        r"^head_value_output\s+0\s+\S+\s+model\.layers\.0\.self_attn\.v_proj\s+output\s+"
        r"\(2, 8, 16\)\s+\(2, 2, 8, 8\)",
        out,
        re.M,
    )  # GQA: 2 key/value heads of 8


def test_components_list(capsys):
    """``fxvene components --list``: every supported model class, by family, from the specs alone."""
    from fxvene.models import families, supported_model_types

    code, out, err = run(capsys, "components", "--list")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["family", "model"] and f"({len(supported_model_types())})" in lines[0]
    listed = [c.strip() for ln in lines[1:] if "  " in ln for c in ln[ln.index("  ") :].split(",") if c.strip()]
    assert sorted(listed) == supported_model_types()
    assert {ln.split()[0] for ln in lines[1:] if ln[:1].strip() and "  " in ln} == {f.name for f in families()}
    assert all(len(ln) <= 100 for ln in lines[:-1])
    for argv in (["components"], ["components", "gpt2-tiny", "--list"]):  # MODEL or --list, not both
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2
        assert "--list" in one_line_error(capsys.readouterr().err)


def test_components_list_loads_nothing_heavy():
    out, err, mods = loaded_after("from fxvene.cli.app import main\nmain(['components', '--list'])")
    assert "GPT2LMHeadModel" in out and "LlamaForCausalLM" in out and not err
    assert_light(mods)


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["components", "no-such-model"], "neither a local model directory nor a built-in name"),
        (["trace", "no-such-model"], "gpt2-tiny"),
        (["components", "gpt2-tiny", "--layer", "9"], "layer 9 is out of range"),
        (["diff", "gpt2-tiny", "--config", "/nonexistent/config.json"], "no such file"),
        (["diff", "gpt2-tiny", "--config", "c.json", "--render", "svg"], "--render needs --dot"),
    ],
)
def test_errors_are_one_line(capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert code == 1
    line = one_line_error(err)
    assert line.startswith(f"fxvene {argv[0]}: error: ") and needle in line


@pytest.mark.parametrize(
    "config,needle",
    [
        ("{not json", "not valid JSON"),
        ('{"representations": [{"layer": 1, "intervention_type": "os.system"}]}', "unknown intervention type"),
        ('{"representations": [{"layer": 1, "component": "nope"}]}', "unknown component 'nope'"),
        ('{"representations": [{"layr": 1}]}', "unknown keys ['layr']"),
        ('{"reps": []}', "unknown keys"),
    ],
)
def test_bad_configs(capsys, tmp_path, config, needle):
    cfg = tmp_path / "c.json"
    cfg.write_text(config)
    code, out, err = run(capsys, "diff", "gpt2-tiny", "--config", str(cfg))
    assert code == 1
    assert needle in one_line_error(err)


@pytest.mark.parametrize("argv", [["components", "gpt2-tiny", "--tracer", "jit"], ["diff", "gpt2-tiny"], []])
def test_usage_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    one_line_error(capsys.readouterr().err)


def test_demo_name_loads_the_shipped_directory(capsys, tmp_path, monkeypatch):
    """'demo' loads whatever fxvene.zoo.demo.demo_model_path() holds (here a stand-in saved GPT-2)."""
    import fxvene.zoo.demo

    make_gpt2(n_layer=2).save_pretrained(tmp_path, safe_serialization=True)
    monkeypatch.setattr(fxvene.zoo.demo, "demo_model_path", lambda: str(tmp_path))
    cli.builtin_model.cache_clear()
    try:
        code, out, err = run(capsys, "trace", "demo", "--tracer", frontends()[0])
    finally:
        cli.builtin_model.cache_clear()
    assert code == 0, err
    assert "GPT2LMHeadModel (demo), 2 layers" in out


# ---------------------------------------------------------------------------------- cheap start-up
# `import fxvene`, `fxvene --help` and argument errors must not load torch, transformers or the
# engine (asserted on the modules a fresh interpreter loaded, not on time).

HEAVY = ("torch", "transformers", "fxvene.api.intervenable", "fxvene.sweeps.sweep", "fxvene.graph.tracing")


def loaded_after(code):
    """The modules a fresh interpreter has loaded after running ``code`` (SystemExit is caught)."""
    import subprocess
    import sys

    prog = (
        "import sys, json\ntry:\n"
        + "".join(f"    {ln}\n" for ln in code.splitlines())
        + "except SystemExit as e:\n    sys.stderr.write(f'exit {e.code}\\n')\n"
        "sys.stdout.write('\\nMODULES ' + json.dumps(sorted(sys.modules)))\n"
    )
    r = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out, mods = r.stdout.rsplit("\nMODULES ", 1)
    return out, r.stderr, set(json.loads(mods))


def assert_light(mods):
    heavy = [m for m in HEAVY if m in mods]
    assert not heavy, f"loaded {heavy}"


def test_import_fxvene_is_light():
    _, _, mods = loaded_after("import fxvene\nfrom fxvene.zoo.demo import demo_model_path\ndir(fxvene)")
    assert "fxvene" in mods
    assert_light(mods)


@pytest.mark.parametrize("argv", [["--help"], ["components", "--help"], ["diff", "--help"]])
def test_help_loads_nothing_heavy(argv):
    out, err, mods = loaded_after(f"from fxvene.cli.app import main\nmain({argv!r})")
    assert out.startswith("usage: fxvene") and "exit 0" in err
    assert_light(mods)


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["components", "no-such-model"], "neither a local model directory nor a built-in name"),
        (["trace", "./no/such/dir"], "model directory './no/such/dir' does not exist"),
        (["components", "gpt2-tiny", "--layer", "4"], "layer 4 is out of range for gpt2-tiny with 4 layers"),
        (["components", "gpt2-tiny", "--layer", "-1"], "layer -1 is out of range"),
        (["components", "llama-tiny", "--component", "block_outptu"], "unknown component 'block_outptu'"),
        (["components", "demo", "--layer", "12"], "with 12 layers"),
        (["diff", "gpt2-tiny", "--config", "/nonexistent/config.json"], "no such file"),
        (["diff", "gpt2-tiny", "--config", "c.json", "--render", "svg"], "--render needs --dot"),
        (["diff", "gpt2-tiny", "--config", "c.json", "--group", "-2"], "--group must be >= 0"),
    ],
)
def test_argument_errors_before_anything_loads(argv, needle):
    """Argument errors are one line, exit status 1, and come before torch or the model load."""
    out, err, mods = loaded_after(f"import sys\nfrom fxvene.cli.app import main\nsys.exit(main({argv!r}))")
    line = one_line_error(err.replace("exit 1\n", ""))
    assert "exit 1" in err and line.startswith(f"fxvene {argv[0]}: error: ") and needle in line, err
    assert_light(mods)


@pytest.mark.parametrize(
    "config,needle",
    [
        ("{not json", "not valid JSON"),
        ('{"representations": [{"layer": 1, "component": "nope"}]}', "unknown component 'nope'"),
        ('{"representations": [{"layer": 7, "component": "block_output"}]}', "representations[0].layer: layer 7"),
        ('{"reps": []}', "unknown keys"),
        ('{"representations": []}', "non-empty list"),
    ],
)
def test_config_errors_before_anything_loads(tmp_path, config, needle):
    cfg = tmp_path / "c.json"
    cfg.write_text(config)
    argv = ["diff", "gpt2-tiny", "--config", str(cfg)]
    out, err, mods = loaded_after(f"import sys\nfrom fxvene.cli.app import main\nsys.exit(main({argv!r}))")
    assert "exit 1" in err and needle in err, err
    assert_light(mods)


def test_usage_error_loads_nothing_heavy():
    out, err, mods = loaded_after(
        "from fxvene.cli.app import main\nmain(['components', 'gpt2-tiny', '--tracer', 'jit'])"
    )
    assert "exit 2" in err and "invalid choice: 'jit'" in err
    assert_light(mods)


def test_field_and_type_errors_come_before_the_model(capsys, tmp_path, monkeypatch):
    """What needs torch (intervention types, field names) is still checked before the model loads."""

    def no_model(spec):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cli, "load_model", no_model)
    for config, needle in [
        ('{"representations": [{"layer": 1, "intervention_type": "os.system"}]}', "unknown intervention type"),
        ('{"representations": [{"layr": 1}]}', "unknown keys ['layr']"),
    ]:
        cfg = tmp_path / "c.json"
        cfg.write_text(config)
        code, out, err = run(capsys, "diff", "gpt2-tiny", "--config", str(cfg))
        assert code == 1 and needle in one_line_error(err)


def test_python_m_fxvene_help_and_errors_load_nothing_heavy(tmp_path):
    out, err, mods = loaded_after(
        "import runpy, sys\nsys.argv = ['fxvene', '--help']\nrunpy.run_module('fxvene', run_name='__main__')"
    )
    assert out.startswith("usage: python -m fxvene") and "exit 0" in err
    assert_light(mods)
    for argv, needle in [
        (["--samples", "0"], "--samples must be >= 1"),
        (["--subject", "Eiffel Tower"], "does not occur in --prompt"),
        (["--model", str(tmp_path)], "is not a model directory"),
        (["--out", str(tmp_path / "no" / "ct.png")], "does not exist"),
    ]:
        out, err, mods = loaded_after(
            f"import runpy, sys\nsys.argv = ['fxvene'] + {argv!r}\nrunpy.run_module('fxvene', run_name='__main__')"
        )
        assert "exit 2" in err and needle in err, err
        assert_light(mods)


# ---------------------------------------------------------------------------------- the public names

# every name `import fxvene as pv` offered when it imported eagerly (pyvene 0.1.8's top level, plus ours)
PUBLIC = [
    "IntervenableConfig",
    "RepresentationConfig",
    "IntervenableModel",
    "IntervenableModelOutput",
    "AdditionIntervention",
    "AutoencoderIntervention",
    "BasisAgnosticIntervention",
    "BoundlessRotatedSpaceIntervention",
    "CollectIntervention",
    "ConstantSourceIntervention",
    "DistributedRepresentationIntervention",
    "Intervention",
    "InterventionOutput",
    "JumpReLUAutoencoderIntervention",
    "LambdaIntervention",
    "LocalistRepresentationIntervention",
    "LowRankRotatedSpaceIntervention",
    "NoiseIntervention",
    "PCARotatedSpaceIntervention",
    "RotatedSpaceIntervention",
    "SharedWeightsTrainableIntervention",
    "SigmoidMaskIntervention",
    "SigmoidMaskRotatedSpaceIntervention",
    "SkipIntervention",
    "SourcelessIntervention",
    "SubtractionIntervention",
    "TrainableIntervention",
    "VanillaIntervention",
    "ZeroIntervention",
    "_do_intervention_by_swap",
    "demo_model_path",
    "load_demo",
    "TracingError",
    "trace",
    "causal_trace",
    "patching_sweep",
    "plot_causal_trace",
]


def test_lazy_names_are_the_real_objects():
    import fxvene as pv
    import fxvene.zoo.demo
    from fxvene import interventions
    from fxvene.api import basic_utils, configuration, intervenable
    from fxvene.graph import tracing
    from fxvene.sweeps import results, sweep

    where = {
        "IntervenableConfig": configuration,
        "RepresentationConfig": configuration,
        "IntervenableModel": intervenable,
        "IntervenableModelOutput": intervenable,
        "demo_model_path": fxvene.zoo.demo,
        "load_demo": fxvene.zoo.demo,
        "TracingError": tracing,
        "trace": tracing,
        "causal_trace": sweep,
        "patching_sweep": sweep,
        "plot_causal_trace": results,
    }
    for name in PUBLIC + list(basic_utils.__all__):
        mod = where.get(name, basic_utils if name in basic_utils.__all__ else interventions)
        assert getattr(pv, name) is getattr(mod, name), name
        assert name in dir(pv), name
    assert pv.SweepResult is results.SweepResult and pv.CausalTraceResult is results.CausalTraceResult
    assert isinstance(pv.__version__, str) and "__version__" in pv.__all__
    assert set(basic_utils.__all__) <= set(pv.__all__)
    ns = {}
    exec("from fxvene import IntervenableModel, VanillaIntervention, RepresentationConfig, set_seed, GET_LOC", ns)
    assert ns["IntervenableModel"] is intervenable.IntervenableModel and ns["GET_LOC"] is basic_utils.GET_LOC
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchThing'"):
        pv.NoSuchThing  # noqa: B018
    with pytest.raises(ImportError):
        exec("from fxvene import NoSuchThing", {})


def test_star_import_matches_all():
    import fxvene

    ns = {}
    exec("from fxvene import *", ns)
    assert {n for n in ns if not n.startswith("__")} == {n for n in fxvene.__all__ if not n.startswith("__")}
    assert ns["VanillaIntervention"] is fxvene.VanillaIntervention


def test_console_script_help():
    """The installed ``fxvene`` command (when this interpreter's environment has it)."""
    import subprocess
    import sys

    exe = os.path.join(os.path.dirname(sys.executable), "fxvene")
    if not os.path.exists(exe):
        pytest.skip("no fxvene console script next to this interpreter")
    r = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("usage: fxvene") and "components" in r.stdout
    r = subprocess.run([exe, "components", "no-such-model"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "neither a local model directory" in one_line_error(r.stderr)
