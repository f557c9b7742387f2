"""Run pyvene 0.1.8's own test suite against fxvene, offline, with ``import pyvene`` resolving to fxvene.

Usage::

    git clone https://github.com/stanfordnlp/pyvene && git -C pyvene checkout v0.1.8
    python compat/pyvene_suite.py pyvene/tests [-k SUBSTRING] [-v]

The tests are pyvene's code: they are read from the folder given (the ``tests`` folder of pyvene's
source tree), imported under the package name ``pyvene_tests``, never copied. The script

- installs a ``pyvene`` alias in ``sys.modules`` before anything is imported: the package itself and
  the public submodule paths pyvene's documentation and tests import (``pyvene.models.interventions``,
  ``pyvene.models.basic_utils``, ``pyvene.models.mlp.modelings_mlp``, ...), each pointing at the fxvene
  module that defines the same names. Any other ``pyvene.*`` import fails (an ImportError that says
  why), so the installed pyvene (if any) is never imported;
- writes small random-weight checkpoints for the hub names the tests load (``gpt2`` with GPT-2's
  geometry, since the tests hard-code its 768 dimensions, 12 heads and 12 layers;
  ``roneneldan/TinyStories-33M``; the Llama helper's tokenizer) into a temporary directory and points
  ``FXVENE_MODELS_DIR`` at it: fxvene's model helpers load a hub name from there when it is present
  (their offline behaviour; nothing is patched). The tokenizer is the one of fxvene's demo model;
- runs every test with unittest in a temporary working directory (the tests write files there) and
  prints one line per test: ``pass``, ``FAIL`` (with the error), ``out of scope`` (needs pyvene's
  private hook machinery or the hub, or checks a documented deliberate difference; the reason is
  printed) or ``not run`` (this environment cannot judge it: pyvene's ``tests/utils.py`` needs
  transformers >= 4.48, or the manual forward a test compares with does not reproduce the installed
  transformers' own forward), then the counts.

The exit status is 1 when an in-scope test fails.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.abc
import importlib.util
import io
import os
import sys
import tempfile
import types
import unittest
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

# pyvene module path -> the fxvene module that defines the same public names
ALIASES = {
    "pyvene.models.basic_utils": "fxvene.api.basic_utils",
    "pyvene.models.configuration_intervenable_model": "fxvene.api.configuration",
    "pyvene.models.intervenable_base": "fxvene.api.intervenable",
    "pyvene.models.interventions": "fxvene.interventions",
    "pyvene.models.layers": "fxvene.interventions.layers",
    "pyvene.models.mlp.modelings_mlp": "fxvene.zoo.toy_models.mlp",
    "pyvene.models.mlp.modelings_intervenable_mlp": "fxvene.zoo.helpers",
    "pyvene.models.gru.modelings_gru": "fxvene.zoo.toy_models.gru",
    "pyvene.models.gru.modelings_intervenable_gru": "fxvene.zoo.helpers",
    "pyvene.models.gpt2.modelings_intervenable_gpt2": "fxvene.zoo.helpers",
    "pyvene.models.gpt_neo.modelings_intervenable_gpt_neo": "fxvene.zoo.helpers",
    "pyvene.models.gpt_neox.modelings_intervenable_gpt_neox": "fxvene.zoo.helpers",
    "pyvene.models.llama.modelings_intervenable_llama": "fxvene.zoo.helpers",
    "pyvene.models.olmo.modelings_intervenable_olmo": "fxvene.zoo.helpers",
    "pyvene.data_generators.causal_model": "fxvene.causal.model",
}
# pyvene modules of which fxvene has some names only: name -> (fxvene module, the names)
PARTIAL = {
    # pyvene's swap helper, which pyvene's __init__ exports too (fxvene exports the same function)
    "pyvene.models.intervention_utils": ("fxvene.interventions", ("_do_intervention_by_swap",)),
}

# tests that need what fxvene does not offer on purpose: test id suffix -> reason
OUT_OF_SCOPE = {
    "IntervenableBasicTestCase.test_new_model_type": "registers T5 in pv.type_to_module_mapping / type_to_dimension_mapping (pyvene's private hook "
    "tables) and downloads google/flan-t5-small from the hub",
    "InterventionUtilsTestCase.test_initialization_positive": "asserts pyvene's private bookkeeping (_intervention_group, _key_getter_call_counter, "
    "_key_setter_call_counter, _batched_setter_activation_select, hot_activations, is_model_stateless)",
    "InterventionUtilsTestCase.test_local_trainable_save_positive": "differs on purpose: counts pyvene's pickled intervention files (*.bin); fxvene saves "
    "safetensors + JSON (docs/differences.md)",
    "InterventionUtilsTestCase.test_local_load_positive": "differs on purpose: gives one location entry for a batch of 10 (pyvene patches example 0's "
    "source into every row); fxvene refuses a location list whose length is not the batch size "
    "with a ValueError (docs/differences.md)",
}
# tests that cannot judge where a reference (a manual forward in pyvene's tests/utils.py) or a module
# they hook does not behave as they assume on the installed transformers: check -> the tests
ORACLE_TESTS = {
    "GPT2_RUN": (
        "ComplexInterventionWithGPT2TestCase.test_clean_run_positive",
        "InterventionWithGPT2TestCase.test_with_multiple_heads_positions_vanilla_intervention_positive",
    ),
    "Llama_RUN": ("InterventionWithLlamaTestCase.test_with_multiple_heads_positions_vanilla_intervention_positive",),
    "attn_dropout": ("IntervenableBasicTestCase.test_customized_intervention_function_get",),
}
PRIVATE_MODULES = {
    "pyvene.models.modeling_utils": "pyvene's private hook machinery (gather_neurons, scatter_neurons, "
    "output_to_subcomponent)",
}


class OutOfScope(ImportError):
    """A pyvene module the alias does not provide (pyvene's private machinery)."""


class _Refuse(importlib.abc.MetaPathFinder):
    """Stops every ``pyvene.*`` import the alias does not provide, so the real pyvene never loads."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "pyvene" or fullname.startswith("pyvene."):
            why = PRIVATE_MODULES.get(fullname, "not part of the pyvene alias (no fxvene counterpart)")
            raise OutOfScope(f"imports {fullname}: {why}", name=fullname)
        return None


def _package(name):
    module = types.ModuleType(name)
    module.__path__ = []
    module.__package__ = name
    return module


def install_alias():
    """Put the ``pyvene`` alias into ``sys.modules`` (refuses if pyvene was imported already)."""
    if "pyvene" in sys.modules and not getattr(sys.modules["pyvene"], "_fxvene_alias", False):
        raise RuntimeError("the real pyvene is already imported in this process; run the script on its own")
    import fxvene

    top = _package("pyvene")
    top._fxvene_alias = True
    top.__getattr__ = lambda name: getattr(fxvene, name)  # pyvene.X -> fxvene.X (PEP 562)
    top.__dir__ = lambda: dir(fxvene)
    sys.modules["pyvene"] = top
    modules = {name: importlib.import_module(target) for name, target in ALIASES.items()}
    for name, (target, names) in PARTIAL.items():
        source = importlib.import_module(target)
        part = types.ModuleType(name)
        for attr in names:
            setattr(part, attr, getattr(source, attr))
        modules[name] = part
    for name, module in sorted(modules.items()):
        parts = name.split(".")
        for i in range(2, len(parts)):  # the packages above it
            pkg = ".".join(parts[:i])
            if pkg not in sys.modules:
                sys.modules[pkg] = _package(pkg)
                setattr(sys.modules[".".join(parts[: i - 1])], parts[i - 1], sys.modules[pkg])
        sys.modules[name] = module
        setattr(sys.modules[".".join(parts[:-1])], parts[-1], module)
    sys.meta_path.insert(0, _Refuse())


# ------------------------------------------------------------------------------ local checkpoints


def write_local_models(root):
    """Random-weight checkpoints (and the demo model's tokenizer) for the hub names the tests load."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2Model, GPTNeoConfig, GPTNeoForCausalLM

    import fxvene

    tokenizer = AutoTokenizer.from_pretrained(fxvene.demo_model_path())
    torch.manual_seed(0)
    models = {
        # GPT-2's geometry (the tests hard-code 768 dimensions, 12 heads, layers up to 10); a smaller
        # MLP, vocabulary and context than the real one, which no test depends on
        "gpt2": GPT2Model(
            GPT2Config(n_inner=768, vocab_size=len(tokenizer), n_positions=128, bos_token_id=0, eos_token_id=0)
        ),
        # TinyStories-33M's layer layout, tiny widths; the vocabulary holds the id the tests embed
        "roneneldan/TinyStories-33M": GPTNeoForCausalLM(
            GPTNeoConfig(
                hidden_size=32,
                num_layers=4,
                num_heads=4,
                attention_types=[[["global", "local"], 2]],
                vocab_size=50257,
                max_position_embeddings=64,
                window_size=16,
            )
        ),
        # the Llama helper's default name: the tests build the model from a config, only the tokenizer loads
        "sharpbai/alpaca-7b-merged": None,
    }
    for name, model in models.items():
        target = Path(root) / name
        target.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(target)
        if model is not None:
            model.save_pretrained(target)


# ------------------------------------------------------------------------------ running


def broken_oracles():
    """``{check: reason}`` for the assumptions of pyvene's tests that the installed transformers breaks:
    the manual forwards of pyvene's tests/utils.py that do not reproduce its own forward on a tiny random
    model, and GPT-2's attn_dropout module, which transformers >= 4.48 no longer calls."""
    import torch
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            utils = importlib.import_module("pyvene_tests.utils")
    except Exception:  # noqa: BLE001 - the files that import utils are reported as not importable
        return {}
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(
        GPT2Config(
            n_embd=24,
            n_layer=2,
            vocab_size=10,
            n_positions=32,
            bos_token_id=0,
            eos_token_id=0,
            attn_pdrop=0.0,
            embd_pdrop=0.0,
            resid_pdrop=0.0,
        )
    ).eval()
    gpt2.config._attn_implementation = "eager"
    llama = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=4,
            num_hidden_layers=2,
            intermediate_size=48,
            vocab_size=10,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
    ).eval()
    ids = torch.randint(0, 10, (2, 6))
    broken = {}
    calls = []
    hook = gpt2.transformer.h[0].attn.attn_dropout.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        gpt2(input_ids=ids)
    hook.remove()
    if not calls:
        broken["attn_dropout"] = (
            f"transformers {transformers.__version__}'s GPT-2 attention never calls its "
            "attn_dropout module (it applies dropout functionally), so the test's component "
            "'h[10].attn.attn_dropout.input' is never reached: pyvene 0.1.8's hook never fires "
            "(the test's cached_w['attn_w'] is a KeyError), fxvene says the module has no "
            "nodes; tests/test_compat_suite.py compares the two where transformers calls it"
        )
    with torch.no_grad():
        for name, model in (("GPT2_RUN", gpt2), ("Llama_RUN", llama)):
            gap = (getattr(utils, name)(model, ids, {}, {}) - model(input_ids=ids).logits).abs().max().item()
            if gap > 1e-5:
                broken[name] = (
                    f"its reference, pyvene's tests/utils.{name}, differs from transformers "
                    f"{transformers.__version__}'s own forward by {gap:.3g} so it cannot judge "
                    "here; tests/test_compat_suite.py compares with pyvene 0.1.8 instead"
                )
    return broken


def _test_names(path):
    """``(class, method)`` for every test method defined in a file (read with ast: works when the file
    cannot be imported; a method defined twice is listed once, as Python keeps the last)."""
    tree = ast.parse(Path(path).read_text())
    found = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            methods = [n.name for n in node.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test")]
            found += [(node.name, m) for m in dict.fromkeys(methods)]
    return found


def _load_tests_package(tests_dir):
    spec = importlib.util.spec_from_file_location(
        "pyvene_tests", tests_dir / "__init__.py", submodule_search_locations=[str(tests_dir)]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules["pyvene_tests"] = package
    spec.loader.exec_module(package)


def _first_line(exc):
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _import_failure(exc):
    """('out of scope' | 'not run', reason) for a test file that cannot be imported."""
    if isinstance(exc, OutOfScope):
        return "out of scope", str(exc)
    if isinstance(exc, ImportError) and "eager_attention_forward" in str(exc):
        import transformers

        return "not run", (
            f"pyvene's tests/utils.py imports eager_attention_forward from transformers' GPT-2, "
            f"which transformers {transformers.__version__} does not have (>= 4.48 does)"
        )
    return "FAIL", "import: " + _first_line(exc)


class _Recorder(unittest.TestResult):
    """Keeps ``(status, reason, traceback)`` per test id (setUpClass errors under their description)."""

    def __init__(self):
        super().__init__()
        self.outcomes = {}

    def addSuccess(self, test):
        self.outcomes[test.id()] = ("pass", "", "")

    def addFailure(self, test, err):
        self.outcomes[test.id()] = ("FAIL", _first_line(err[1]), self._exc_info_to_string(err, test))

    addError = addFailure  # an _ErrorHolder (setUpClass, tearDownClass) has an id() too

    def addSkip(self, test, reason):
        self.outcomes[test.id()] = ("not run", reason, "")


def _rows_of_file(folder, path, names, unjudged):
    """``(test id, status, reason, traceback)`` for the tests ``names`` of one file, run in order."""
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            module = importlib.import_module(f"pyvene_tests.{folder}.{path.stem}")
    except Exception as exc:  # noqa: BLE001 - a test file that cannot be imported is reported
        status, reason = _import_failure(exc)
        for cls_name, method in names:
            yield f"{folder}/{path.stem}.{cls_name}.{method}", status, reason, ""
        return
    for cls_name, method in names:
        test_id = f"{folder}/{path.stem}.{cls_name}.{method}"
        name = f"{cls_name}.{method}"
        if name in OUT_OF_SCOPE:
            yield test_id, "out of scope", OUT_OF_SCOPE[name], ""
        elif name in unjudged:
            yield test_id, "not run", unjudged[name], ""
        else:
            yield (test_id, *_run_one(getattr(module, cls_name), method))


def run(tests_dir, pattern=None, verbose=False):
    """Run pyvene's tests in ``tests_dir`` (only ids containing ``pattern``); print one line per test and
    the counts; return the exit status (1 if an in-scope test failed)."""
    tests_dir = Path(tests_dir).resolve()
    if not (tests_dir / "utils.py").is_file():
        raise SystemExit(f"tests_dir must be pyvene's tests folder (with utils.py), got {tests_dir}")
    install_alias()
    work = tempfile.mkdtemp(prefix="pyvene-suite-")
    os.environ["FXVENE_MODELS_DIR"] = os.path.join(work, "models")
    os.environ.setdefault("FXVENE_CACHE_DIR", os.path.join(work, "graph-cache"))
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        write_local_models(os.environ["FXVENE_MODELS_DIR"])
    _load_tests_package(tests_dir)
    os.chdir(work)  # the tests write their save directories into the working directory
    unjudged = {test: reason for name, reason in broken_oracles().items() for test in ORACLE_TESTS[name]}
    counts = dict.fromkeys(("pass", "FAIL", "out of scope", "not run"), 0)
    for folder in ("unit_tests", "integration_tests"):
        for path in sorted((tests_dir / folder).glob("*.py")):
            names = [(c, m) for c, m in _test_names(path) if not pattern or pattern in f"{path.stem}.{c}.{m}"]
            if path.name == "__init__.py" or not names:
                continue
            for test_id, status, reason, trace in _rows_of_file(folder, path, names, unjudged):
                counts[status] += 1
                print(f"{status:<12} {test_id}" + (f"  -- {reason}" if reason else ""), flush=True)
                if verbose and trace:
                    print(trace)
    print(f"\n{sum(counts.values())} tests: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return 1 if counts["FAIL"] else 0


def _run_one(cls, method):
    """Run one test method with its class's setUpClass/tearDownClass: ``(status, reason, traceback)``."""
    result = _Recorder()
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        unittest.TestSuite([cls(method)]).run(result)  # a top-level suite runs setUpClass and tearDownClass
    own = result.outcomes.pop(f"{cls.__module__}.{cls.__qualname__}.{method}", None)
    for where, (status, reason, trace) in result.outcomes.items():  # setUpClass / tearDownClass failed
        if status == "FAIL":
            return status, f"{where}: {reason}", trace
    return own or ("FAIL", "did not run", "")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tests_dir", help="pyvene's tests folder (pyvene 0.1.8's source tree)")
    parser.add_argument("-k", dest="pattern", help="run only tests whose id contains this text")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the traceback of each failure")
    args = parser.parse_args(argv)
    return run(args.tests_dir, args.pattern, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
