"""pv.CausalModel against pyvene 0.1.8's CausalModel: same structure, runs, seeded samples and datasets.

Every comparison builds the same model twice (fresh argument containers each time: pyvene sorts the
variables list and writes into ``pos`` in place), seeds ``random`` the same way, and compares.
Some models have a mechanism that itself draws from ``random``: then the results match only if both
call the mechanisms the same number of times in the same order.
"""

import random

import numpy as np
import pytest
import torch

import fxvene as pv

# ------------------------------------------------------------------------------ models


def equality_args(seed=0, emb=2, n=12):
    """The hierarchical-equality model of pyvene's DAS tutorial (entities are numpy vectors)."""
    rng = random.Random(seed)
    reps = [np.array([round(rng.uniform(-1, 1), 2) for _ in range(emb)]) for _ in range(n)]
    values = {v: reps for v in "WXYZ"}
    values.update(WX=[True, False], YZ=[True, False], O=[True, False])
    parents = {"W": [], "X": [], "Y": [], "Z": [], "WX": ["W", "X"], "YZ": ["Y", "Z"], "O": ["WX", "YZ"]}

    def filler():
        return reps[0]

    functions = {
        "W": filler,
        "X": filler,
        "Y": filler,
        "Z": filler,
        "WX": np.array_equal,
        "YZ": np.array_equal,
        "O": lambda x, y: x == y,
    }
    return dict(
        variables=["W", "X", "Y", "Z", "WX", "YZ", "O"],
        values=values,
        parents=parents,
        functions=functions,
        pos={"W": (0.2, 0), "O": (1.5, 3)},
    )


def noisy_args():
    """Integer variables, names out of order, a longer path, two outputs, and a mechanism ``n`` that
    draws from ``random`` each time it runs (so a different number or order of mechanism calls
    shifts every later draw)."""
    parents = {"b": [], "a": [], "c": [], "m": ["a", "b"], "n": ["m"], "k": ["m", "c"], "z": ["n", "k"], "out2": ["c"]}
    values = {
        "a": [0, 1, 2],
        "b": [0, 1],
        "c": [0, 1, 2],
        "m": [0, 1, 2],
        "n": [0, 1, 2],
        "k": [0, 1],
        "z": [0, 1, 2],
        "out2": [0, 1],
    }
    functions = {
        "a": lambda: 1,
        "b": lambda: 0,
        "c": lambda: 2,
        "m": lambda a, b: (a + b) % 3,
        "n": lambda m: (m + 1 + int(random.random() < 2)) % 3,  # the value is m + 2, the draw is real
        "k": lambda m, c: int(m > c),
        "z": lambda n, k: (n + k) % 3,
        "out2": lambda c: int(c == 2),
    }
    return dict(variables=list(parents), values=values, parents=parents, functions=functions)


def build(cls, args, **extra):
    """A model from fresh containers (pyvene mutates its arguments, and its default ``pos={}`` is one
    dict shared by every model built without ``pos``, so layouts leak from one model to the next)."""
    fresh = {"pos": {}, **{k: (list(v) if isinstance(v, list) else dict(v)) for k, v in args.items()}}
    return cls(**fresh, **extra)


def same(x, y):
    """Deep equality of settings, datasets and tensors (numpy arrays and tensors compared exactly)."""
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
    if isinstance(x, np.ndarray):
        return isinstance(y, np.ndarray) and np.array_equal(x, y)
    if isinstance(x, dict):
        return isinstance(y, dict) and list(x) == list(y) and all(same(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return type(x) is type(y) and len(x) == len(y) and all(same(a, b) for a, b in zip(x, y))
    return type(x) is type(y) and x == y


def seeded(seed, fn):
    random.seed(seed)
    return fn()


@pytest.fixture(scope="module")
def pair(pyvene):
    """{name: (pyvene's model, ours)} for the two models."""
    random.seed(0)  # the noisy model's mechanisms run in the constructors
    a = {"eq": build(pyvene.CausalModel, equality_args()), "noisy": build(pyvene.CausalModel, noisy_args())}
    after_a = random.random()
    random.seed(0)
    b = {"eq": build(pv.CausalModel, equality_args()), "noisy": build(pv.CausalModel, noisy_args())}
    assert random.random() == after_a  # the constructors ran the mechanisms as often as pyvene's
    return {k: (a[k], b[k]) for k in a}


# ------------------------------------------------------------------------------ structure and runs


@pytest.mark.parametrize("name", ["eq", "noisy"])
def test_structure_matches_pyvene(pair, name):
    theirs, ours = pair[name]
    for attr in ("variables", "inputs", "outputs", "children", "timesteps", "end_time", "start_variables", "pos"):
        assert same(getattr(ours, attr), getattr(theirs, attr)), attr
    seeded(5, theirs.generate_equiv_classes)  # the noisy model's mechanism draws from random here
    seeded(5, ours.generate_equiv_classes)
    assert same(ours.equiv_classes, theirs.equiv_classes)


def test_given_timesteps_and_equiv_classes_match_pyvene(pyvene):
    args = noisy_args()
    steps = {"a": 0, "b": 1, "c": 0, "m": 2, "n": 3, "k": 4, "z": 5, "out2": 2}
    equiv = {"k": {0: [{"m": 0, "c": 0}], 1: [{"m": 2, "c": 1}]}}
    theirs = seeded(1, lambda: build(pyvene.CausalModel, args, timesteps=dict(steps), equiv_classes=dict(equiv)))
    ours = seeded(1, lambda: build(pv.CausalModel, args, timesteps=dict(steps), equiv_classes=dict(equiv)))
    for attr in ("variables", "timesteps", "pos", "equiv_classes"):
        assert same(getattr(ours, attr), getattr(theirs, attr)), attr
    assert seeded(2, lambda: [theirs.sample_input_tree_balanced("k") for _ in range(20)]) == seeded(
        2, lambda: [ours.sample_input_tree_balanced("k") for _ in range(20)]
    )


@pytest.mark.parametrize("name", ["eq", "noisy"])
def test_run_forward_interchange_and_live_paths_match_pyvene(pair, name):
    theirs, ours = pair[name]

    def script(m):
        inputs = [m.sample_input() for _ in range(6)]
        out = [m.run_forward(), m.run_forward(inputs[0])]
        hidden = [v for v in m.variables if v not in m.inputs and v not in m.outputs]
        out.append(m.run_forward({**inputs[1], hidden[0]: m.values[hidden[0]][-1]}))  # intervene on a hidden one
        out.append(m.run_interchange(inputs[2], {hidden[0]: inputs[3], m.inputs[0]: inputs[4]}))
        out.append(m.run_interchange(inputs[5], {m.outputs[0]: inputs[1]}))
        out.append(m.find_live_paths(inputs[3]))
        return inputs, out + [random.random()]  # and the state of random afterwards

    ins_a, out_a = seeded(7, lambda: script(theirs))
    ins_b, out_b = seeded(7, lambda: script(ours))
    assert same(ins_b, ins_a)
    assert same(out_b, out_a)
    assert type(out_b[0]) is type(out_a[0])  # a defaultdict(None), printed the same way


# ------------------------------------------------------------------------------ samplers


@pytest.mark.parametrize("name", ["eq", "noisy"])
def test_samplers_match_pyvene(pair, name):
    theirs, ours = pair[name]

    def script(m):
        out_var = m.outputs[0]
        rows = [m.sample_input() for _ in range(30)]
        rows += [m.sample_input(mandatory=lambda s: s[out_var] == m.values[out_var][0]) for _ in range(10)]
        rows += [m.sample_intervention() for _ in range(30)]
        rows += [m.sample_input_tree_balanced(out_var) for _ in range(30)]
        rows += [m.sample_input_tree_balanced(out_var, m.values[out_var][1]) for _ in range(10)]
        hidden = [v for v in m.variables if v not in m.inputs and v not in m.outputs]
        rows += [m.sample_input_tree_balanced(output_var=hidden[-1]) for _ in range(10)]
        return rows, random.random()  # and the state of random afterwards

    assert same(seeded(11, lambda: script(ours)), seeded(11, lambda: script(theirs)))


def test_filters_match_pyvene(pair):
    theirs, ours = pair["noisy"]

    def script(m):
        settings = [m.run_forward(m.sample_input()) for _ in range(15)]
        filters = [
            m.get_path_maxlen_filter([3, 4]),
            m.get_partial_filter({"m": 1, "c": 2}),
            m.get_specific_path_filter("a", "z"),
        ]
        return [[f(s) for s in settings] for f in filters], random.random()

    assert seeded(3, lambda: script(ours)) == seeded(3, lambda: script(theirs))


# ------------------------------------------------------------------------------ datasets and encoders


def intervention_id(intervention):
    return 2 if "WX" in intervention and "YZ" in intervention else 0 if "WX" in intervention else 1


@pytest.mark.parametrize("return_tensors", [True, False])
def test_factual_and_counterfactual_datasets_match_pyvene(pair, return_tensors):
    theirs, ours = pair["eq"]

    def script(m):
        fact = m.generate_factual_dataset(40, m.sample_input_tree_balanced, return_tensors=return_tensors)
        fact += m.generate_factual_dataset(10, filter=lambda s: s["W"][0] > 0, return_tensors=return_tensors)
        cf = m.generate_counterfactual_dataset(
            40, intervention_id, 8, sampler=m.sample_input_tree_balanced, return_tensors=return_tensors
        )
        return fact, cf

    fact_a, cf_a = seeded(21, lambda: script(theirs))
    fact_b, cf_b = seeded(21, lambda: script(ours))
    assert len(fact_b) == 50 and len(cf_b) == 40
    assert same(fact_b, fact_a)
    assert same(cf_b, cf_a)
    if return_tensors:
        assert cf_b[0]["source_input_ids"].shape == (2, 8) and cf_b[0]["labels"].dtype == torch.float32


def test_counterfactual_dataset_with_custom_samplers_matches_pyvene(pair):
    """The tutorial's DAS training data: a sampler of fresh entities that honours output_var."""
    theirs, ours = pair["eq"]

    def randvec():
        return np.array([round(random.uniform(-1, 1), 2) for _ in range(4)])

    def input_sampler(output_var=None, output_var_value=None):
        a, b, c, d = randvec(), randvec(), randvec(), randvec()
        if output_var is None:
            return random.choice([dict(W=a, X=b, Y=c, Z=d), dict(W=a, X=a, Y=b, Z=b), dict(W=a, X=a, Y=c, Z=d)])
        eq = output_var_value
        if output_var == "WX":
            return random.choice([dict(W=a, X=a if eq else b, Y=c, Z=d), dict(W=a, X=a if eq else b, Y=c, Z=c)])
        return random.choice([dict(W=a, X=b, Y=c, Z=c if eq else d), dict(W=a, X=a, Y=c, Z=c if eq else d)])

    def script(m):
        return m.generate_counterfactual_dataset(30, intervention_id, 6, sampler=input_sampler)

    a, b = seeded(4, lambda: script(theirs)), seeded(4, lambda: script(ours))
    assert len(b) == 30 and same(b, a)


@pytest.mark.filterwarnings("ignore:To copy construct from a tensor")  # pyvene's torch.tensor(tensor)
def test_encoders_match_pyvene(pyvene):
    args = dict(
        variables=["x", "v", "flag", "y"],
        parents={"x": [], "v": [], "flag": [], "y": ["x", "v", "flag"]},
        values={
            "x": [0, 3],
            "v": [np.array([0.5, -1.25]), np.array([1.0, 2.0])],
            "flag": [True, False],
            "y": [0.0, 1.0, 2.0],
        },
        functions={
            "x": lambda: 3,
            "v": lambda: np.array([0.5, -1.25]),
            "flag": lambda: True,
            "y": lambda x, v, f: float(x > v.sum()) + float(f),
        },
    )
    theirs, ours = build(pyvene.CausalModel, args), build(pv.CausalModel, args)
    settings = [
        theirs.run_forward(),
        theirs.run_forward({"x": 0, "flag": False}),
        {"x": 0.1, "v": np.array([1 / 3, -2e-9]), "flag": True, "y": 2.0},  # every input a float: fast path
        {"x": 2**60 + 1, "v": np.array([1 / 3, 0.7], dtype=np.float32), "flag": np.True_, "y": np.float64(1)},
        {"x": torch.tensor(0.3, dtype=torch.float64), "v": [0.25, 1 / 7], "flag": False, "y": True},
    ]
    for setting in settings:
        assert same(ours.input_to_tensor(setting), theirs.input_to_tensor(setting))
        assert same(ours.output_to_tensor(setting), theirs.output_to_tensor(setting))
    assert ours.input_to_tensor(theirs.run_forward()).tolist() == [True, 0.5, -1.25, 3]  # inputs sorted by name


def test_plots_draw_the_same_labels_as_pyvene(pair, monkeypatch):
    plt = pytest.importorskip("matplotlib.pyplot")
    monkeypatch.setattr(plt, "show", lambda *a, **k: None)
    theirs, ours = pair["noisy"]
    setting = seeded(0, lambda: theirs.run_forward())

    def texts(draw):
        draw()
        labels = sorted(t.get_text() for t in plt.gca().texts)
        plt.close("all")
        return labels

    assert texts(ours.print_structure) == texts(theirs.print_structure) == sorted(ours.variables)
    assert texts(lambda: ours.print_setting(setting)) == texts(lambda: theirs.print_setting(setting))


# ------------------------------------------------------------------------------ deliberate differences


def test_arguments_are_not_mutated():
    args = noisy_args()
    variables, pos = list(args["variables"]), {"a": (5, 5)}
    model = pv.CausalModel(variables, args["values"], args["parents"], args["functions"], pos=pos)
    assert variables == args["variables"] and pos == {"a": (5, 5)}
    assert model.variables[:3] == ["a", "b", "c"] and model.pos["a"] == (5, 5) and "z" in model.pos


def test_counterfactual_dataset_uses_the_given_encoders(pair):
    _, ours = pair["eq"]
    data = seeded(
        0,
        lambda: ours.generate_counterfactual_dataset(
            4,
            intervention_id,
            2,
            sampler=ours.sample_input_tree_balanced,
            input_function=lambda s: ours.input_to_tensor(s) * 10,
            output_function=lambda s: torch.tensor([7.0]),
        ),
    )
    plain = seeded(
        0, lambda: ours.generate_counterfactual_dataset(4, intervention_id, 2, sampler=ours.sample_input_tree_balanced)
    )
    for d, p in zip(data, plain):
        assert torch.equal(d["input_ids"], p["input_ids"] * 10) and torch.equal(d["labels"], torch.tensor([7.0]))
        assert torch.equal(d["source_input_ids"], p["source_input_ids"] * 10)


def test_default_counterfactual_sampler_meets_output_var():
    """pyvene 0.1.8's default sampler (sample_input) rejects output_var; here it samples until it holds."""
    m = build(pv.CausalModel, equality_args())
    data = seeded(
        0,
        lambda: m.generate_counterfactual_dataset(
            12, intervention_id, 4, intervention_sampler=lambda: {"WX": False, "YZ": True}, return_tensors=False
        ),
    )
    assert len(data) == 12
    for ex in data:
        wx_source, yz_source = ex["source_input_ids"]
        assert not np.array_equal(wx_source["W"], wx_source["X"]) and np.array_equal(yz_source["Y"], yz_source["Z"])
        assert ex["labels"]["O"] is False and ex["intervention_id"] == [2]


BAD = [
    (lambda a: a["parents"].update(WX=["W", "Q"]), ValueError, "'Q' is not a variable"),
    (lambda a: a["parents"].update(W=["O"]), ValueError, "cycle W -> WX -> O -> W"),
    (lambda a: a["variables"].append("W"), ValueError, "'W' is listed twice"),
    (lambda a: a["values"].pop("YZ"), ValueError, "values: no entry for ['YZ']"),
    (lambda a: a["values"].update(Q=[1]), ValueError, "values: ['Q'] is not a variable"),
    (lambda a: a["values"].update(O=[]), ValueError, "values['O']: empty"),
    (lambda a: a["functions"].update(O=lambda x: x), TypeError, "functions['O']: is called with the values of its 2"),
    (lambda a: a["functions"].update(O=3), TypeError, "functions['O']: expected a callable"),
    (lambda a: a["parents"].update(O="WX"), TypeError, "parents['O']: expected a list"),
    (lambda a: a.update(variables="WXYZ"), TypeError, "variables: expected a list"),
]


@pytest.mark.parametrize("edit,exc,msg", BAD)
def test_bad_constructor_arguments_are_clear_errors(edit, exc, msg):
    args = equality_args()
    edit(args)
    with pytest.raises(exc) as err:
        pv.CausalModel(**args)
    assert msg in str(err.value)


def test_bad_timesteps_are_clear_errors():
    args = equality_args()
    with pytest.raises(ValueError, match="parent 'WX' .* before its child 'O'"):
        pv.CausalModel(**args, timesteps={"W": 0, "X": 0, "Y": 0, "Z": 0, "WX": 2, "YZ": 1, "O": 2})
    with pytest.raises(ValueError, match=r"timesteps: no entry for \['O'\]"):
        pv.CausalModel(**equality_args(), timesteps={"W": 0, "X": 0, "Y": 0, "Z": 0, "WX": 1, "YZ": 1})


def test_bad_calls_are_clear_errors(pair):
    _, m = pair["eq"]
    with pytest.raises(ValueError, match="intervention: 'wx' is not a variable"):
        m.run_forward({"wx": True})
    with pytest.raises(TypeError, match="intervention: expected a dict"):
        m.run_forward([("WX", True)])
    with pytest.raises(ValueError, match="source_interventions: 'Q' is not a variable"):
        m.run_interchange(m.run_forward(), {"Q": {}})
    with pytest.raises(ValueError, match="'maybe' is not a value of 'O'"):
        m.sample_input_tree_balanced("O", "maybe")
    with pytest.raises(ValueError, match="output_var 'W' is an input variable"):
        m.sample_input_tree_balanced("W")
    with pytest.raises(ValueError, match="output_var.*'Q' is not a variable"):
        m.sample_input_tree_balanced("Q")
    with pytest.raises(ValueError, match="batch_size: expected an integer >= 1, got 0"):
        m.generate_counterfactual_dataset(4, intervention_id, 0)
    with pytest.raises(NotImplementedError, match="marginalize"):
        m.marginalize("O")


def test_mechanism_errors_are_clear():
    args = equality_args()
    args["functions"]["O"] = lambda x, y: "yes" if x == y else "no"  # not in values["O"]
    m = pv.CausalModel(**args)
    with pytest.raises(ValueError, match=r"functions\['O'\] gives 'yes' .* not in values\['O'\]"):
        m.sample_input_tree_balanced()
    args = noisy_args()
    args["values"]["z"] = [0, 1, 2, 3]  # 3 is never produced
    m = pv.CausalModel(**args)
    with pytest.raises(ValueError, match="no setting of the parents of 'z' gives it the value 3"):
        m.sample_input_tree_balanced("z", 3)
    only_io = pv.CausalModel(
        ["a", "b"], {"a": [0, 1], "b": [0, 1]}, {"a": [], "b": ["a"]}, {"a": lambda: 0, "b": lambda a: a}
    )
    with pytest.raises(ValueError, match="no intermediate variable"):
        only_io.sample_intervention()  # pyvene loops forever
