"""Messages a person reads: fxvene's errors fit in three lines and 300 characters and say what to do;
no warning from a tracer fxvene tried and abandoned reaches the user.

The length of every error the bad-input tests provoke is checked by the plugin in tests/_messages.py
(each ``pytest.raises`` of those modules); this module checks the checker, the messages that replaced
long lists, and the warnings of an abandoned tracing attempt.
"""

import os
import warnings

import pytest
import torch
import transformers
from _messages import MAX_CHARS, MAX_LINES, message_problem, raised_by_fxvene
from conftest import make_gpt2

import fxvene
import fxvene as pv
from fxvene.graph import tracing

# ------------------------------------------------------------------------------------ the checker


def _raiser(where):
    """A function that raises ``ValueError(msg)`` from a file under ``where`` (as fxvene's code would)."""
    ns = {}
    exec(compile("def f(msg):\n    raise ValueError(msg)\n", os.path.join(where, "_message_probe.py"), "exec"), ns)
    return ns["f"]


FXVENE_DIR = os.path.dirname(fxvene.__file__)
TORCH_DIR = os.path.dirname(torch.__file__)


@pytest.fixture
def strict(monkeypatch):
    monkeypatch.delenv("FXVENE_MESSAGES_LOG", raising=False)  # fail, not record


def test_the_checker_is_on_here():
    assert getattr(pytest.raises, "__wrapped__", None) is not None


def test_a_long_fxvene_message_fails_the_test(strict):
    f = _raiser(FXVENE_DIR)
    with pytest.raises(pytest.fail.Exception, match=f"{MAX_CHARS + 1} characters"):
        with pytest.raises(ValueError):
            f("x" * (MAX_CHARS + 1))
    with pytest.raises(pytest.fail.Exception, match=f"{MAX_LINES + 1} lines"):
        with pytest.raises(ValueError):
            f("\n".join(["line"] * (MAX_LINES + 1)))
    with pytest.raises(pytest.fail.Exception, match="characters"):  # the function form too
        pytest.raises(ValueError, f, "y" * 500)


def test_a_short_message_and_a_foreign_one_pass(strict):
    with pytest.raises(ValueError, match="^ok"):
        _raiser(FXVENE_DIR)("ok\n" * (MAX_LINES - 1) + "x" * (MAX_CHARS - 3 * (MAX_LINES - 1)))
    with pytest.raises(ValueError):  # raised inside torch, only passed on: not fxvene's message
        _raiser(TORCH_DIR)("z" * 1000)
    with pytest.raises(ValueError):  # raised by the test itself
        raise ValueError("w" * 1000)


def test_raise_site_and_problem():
    try:
        _raiser(FXVENE_DIR)("a" * 301)
    except ValueError as e:
        assert raised_by_fxvene(e) and "301 characters" in message_problem(e)
    try:
        _raiser(TORCH_DIR)("a")
    except ValueError as e:
        assert not raised_by_fxvene(e) and message_problem(e) is None


# ------------------------------------------------------------------------------------ long lists, now short


def _cfg(**kw):
    kw.setdefault("layer", 0)
    kw.setdefault("intervention_type", pv.VanillaIntervention)
    return pv.IntervenableConfig([pv.RepresentationConfig(**kw)])


def test_unsupported_model_points_to_the_list():
    with pytest.raises(TypeError) as e:
        pv.IntervenableModel(_cfg(), torch.nn.Linear(3, 3))
    msg = str(e.value)
    assert msg.startswith("model") and "Linear" in msg and "`fxvene components --list`" in msg
    assert "GPT2LMHeadModel" in msg and "Gemma2ForCausalLM" not in msg  # two examples, not sixty classes


def test_unknown_names_suggest_the_close_ones(gpt2):
    with pytest.raises(ValueError, match=r"unknown component 'block_outptu'.*did you mean 'block_output'"):
        pv.IntervenableModel(_cfg(component="block_outptu"), gpt2)
    with pytest.raises(ValueError, match=r"'vanilla' names no intervention class.*did you mean 'VanillaIntervention'"):
        pv.IntervenableModel(_cfg(intervention_type="vanilla"), gpt2)


def test_known_lists_what_fits():
    from fxvene.graph.errors import clip, known

    names = [f"name_{i:02d}" for i in range(40)]
    s = known("zzz", names)
    assert s.startswith("known: name_00, name_01") and s.endswith("(40 in all)") and len(s) <= 150
    assert known("name_0", names[:3]).startswith("did you mean")
    assert known("q", ["a", "b"]) == "known: a, b"
    assert clip("\x1b[1mfirst\x1b[0m line\nsecond line") == "first line"
    assert clip("x" * 500, 50) == "x" * 47 + "..."


# ------------------------------------------------------------------------------------ an abandoned tracer is quiet


class GPT2LMHeadModel(transformers.GPT2LMHeadModel):
    """GPT-2 (a class HF's fx tracer supports, by name) whose forward HF's fx tracer cannot trace: a Python
    loop over a buffer (a Proxy cannot be iterated). Like transformers' own code it warns when it sees
    fx proxies, so the abandoned hf_fx attempt emits a UserWarning. torch.export traces it."""

    def __init__(self, config):
        super().__init__(config)
        self.register_buffer("scales", torch.tensor([0.5, 0.25, 0.25]), persistent=False)

    def forward(self, input_ids=None, attention_mask=None, use_cache=None):
        if isinstance(input_ids, torch.fx.Proxy):
            warnings.warn("traced with torch.fx proxies: the output may be specialised", UserWarning, stacklevel=2)
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)
        out.logits = out.logits * sum(s for s in self.scales)
        return out


def _hf_fx_unfit():
    m = GPT2LMHeadModel(make_gpt2(n_layer=1, seed=21).config).eval()
    m.config._attn_implementation = "eager"
    return m


def test_no_warning_from_an_abandoned_tracer(monkeypatch):
    m = _hf_fx_unfit()
    first, _ = tracing.choose_frontend(m)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        tg = tracing.trace(m, tracer="auto")
    assert tg.frontend == "export"
    assert [str(w.message) for w in seen] == []
    ids = torch.randint(0, 50, (3, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = tg.wrap_outputs(tg.gm(input_ids=ids, attention_mask=torch.ones_like(ids))).logits
        torch.testing.assert_close(got, m(input_ids=ids).logits)
    if not tracing.hf_fx_available():
        pytest.skip("transformers 5: no HF fx tracer, so tracer='auto' tries nothing it abandons")
    assert first == "hf_fx"  # auto tried HF's fx tracer first and gave it up
    # the same attempt, its warnings not held back: the warning is there to be held
    monkeypatch.setattr(tracing, "_held_warnings", lambda: _NotHeld())
    m2 = _hf_fx_unfit()
    with pytest.warns(UserWarning, match="traced with torch.fx proxies"):
        assert tracing.trace(m2, tracer="auto").frontend == "export"


class _NotHeld:
    def __enter__(self):
        return []

    def __exit__(self, *exc):
        return False


def test_a_kept_tracers_warnings_still_reach_the_user():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with tracing._held_warnings() as held:
            warnings.warn("from the tracer fxvene keeps", UserWarning, stacklevel=1)
        assert seen == []
        tracing._replay(held)
    assert [str(w.message) for w in seen] == ["from the tracer fxvene keeps"]


class Qwen2MoeForSequenceClassificationWithALongName(GPT2LMHeadModel):
    pass


@pytest.mark.parametrize("cls", [GPT2LMHeadModel, Qwen2MoeForSequenceClassificationWithALongName])
@pytest.mark.parametrize("tracer", ["auto", "hf_fx"])
def test_both_attempts_fit_in_three_lines(monkeypatch, cls, tracer):
    """When every frontend fails, the error names each attempt, cut to its first line."""
    from fxvene.api.validation import unsupported

    m = cls(make_gpt2(n_layer=1, seed=21).config).eval()
    m.config._attn_implementation = "sdpa"
    monkeypatch.setattr(tracing, "hf_fx_available", lambda: True)  # the hint for tracer='hf_fx' on SDPA
    errors = {"hf_fx": "TraceError: " + "p" * 400 + "\nmore", "export": "UserError: " + "q" * 400}
    if tracer == "hf_fx":
        errors.pop("export")
    e = tracing._failure(m, tracer, errors)
    u = unsupported(m, e)
    for err in (e, u):
        msg = str(err)
        assert len(msg) <= MAX_CHARS and msg.count("\n") < MAX_LINES, msg
        assert cls.__name__ in msg and "hf_fx: TraceError: ppp" in msg and "more" not in msg
        assert ("export: UserError: qqq" in msg) == (tracer == "auto")
    assert u.attempts == errors
    assert ("use tracer='auto' or 'export'" in str(u)) == (tracer == "hf_fx")
    assert ("`fxvene components --list`" in str(u)) == (tracer == "auto")
