"""One tensor under two names (issue 28, items 5, 6 and 11), against pyvene 0.1.8.

Block ``L``'s output is block ``L+1``'s input (the GRU: cell ``L``'s output, cell ``L+1``'s input at one
step; GPT-2: ``transformer.drop.output`` is ``transformer.h[0].input``). pyvene's hooks write in place
and fire in execution order: the output hook of the earlier module, then the pre-hook of the later one;
hooks on one module fire in config order. So whatever the config order, the later layer's write wins,
and a Collect reads the value before every write whose hook fires after its own. fxvene orders the
operations at one graph node the same way (``passes.rewrite.insert_interventions``).
"""

import pytest
import torch
from conftest import make_gpt2, make_llama

import fxvene as fv

pv = pytest.importorskip("pyvene")

# each model twice from one seed: fxvene's, and pyvene's (which removes a model's hooks)
MODELS = {
    "gpt2": (lambda: make_gpt2(n_layer=2), ("transformer.h[%d].output", "transformer.h[%d].input")),
    "llama": (lambda: make_llama(n_layer=2), ("model.layers[%d].output", "model.layers[%d].input")),
}
_BUILT = {}


def _models(name):
    if name not in _BUILT:
        _BUILT[name] = (MODELS[name][0](), MODELS[name][0]())  # (fxvene's, pyvene's)
    return _BUILT[name]


def _close(a, b):
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _ids(seed, b=2, n=8):
    return {"input_ids": torch.randint(0, 50, (b, n), generator=torch.Generator().manual_seed(seed))}


# two overlapping position sets (positions 3 and 5 are written by both)
LOC_A = [[1, 3], [2, 5]]
LOC_B = [[3, 4], [5, 6]]


def _run(lib, model, reps, **call):
    """(collected, intervened output) of ``reps`` = [(component, layer, intervention type name)]."""
    cfg = lib.IntervenableConfig(
        representations=[
            lib.RepresentationConfig(
                layer=layer, component=comp, max_number_of_units=2, intervention_type=getattr(lib, t + "Intervention")
            )
            for comp, layer, t in reps
        ]
    )
    res = lib.IntervenableModel(cfg, model)(**call)
    if isinstance(res[0], tuple):
        return res[0][1], res[1]
    return [], res[1]


def _both(name, reps, **call):
    ours, theirs = _models(name)
    return _run(fv, ours, reps, **call), _run(pv, theirs, reps, **call)


def _check(got, ref):
    (gc, go), (rc, ro) = got, ref
    _close(go[0], ro[0])
    assert len(gc) == len(rc)
    for a, b in zip(gc, rc):
        _close(a, b)


def _writes(name, reps):
    """Two source-reading writes (Vanilla and Addition from two sources) at overlapping positions."""
    locs = [LOC_A, LOC_B]
    return _both(name, reps, base=_ids(1), sources=[_ids(2), _ids(3)], unit_locations={"sources->base": (locs, locs)})


def _reads(name, reps):
    """Collect and Zero (no source) at overlapping positions."""
    return _both(name, reps, base=_ids(4), unit_locations={"base": [LOC_A, LOC_B]})


# ----------------------------------------------------------------------------- item 5: write order


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("types", [("Vanilla", "Addition"), ("Addition", "Vanilla")])
def test_writes_under_two_names_act_in_execution_order(name, types):
    """block_input 1 listed before block_output 0: pyvene's output hook of block 0 still fires first."""
    later = [("block_input", 1, types[0]), ("block_output", 0, types[1])]
    got, ref = _writes(name, later)
    _check(got, ref)
    earlier = [("block_output", 0, types[1]), ("block_input", 1, types[0])]
    got2, ref2 = _writes(name, earlier)
    _check(got2, ref2)
    # the same two writes in config order (one name, one hook) give other numbers: the orders differ here
    config_order = [("block_output", 0, types[0]), ("block_output", 0, types[1])]
    assert not torch.allclose(_writes(name, config_order)[1][1][0], ref[1][0], atol=1e-3)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_string_components_and_component_names_alias(name):
    """A module path and a component name of one tensor order as the hooks they name."""
    out_path, in_path = MODELS[name][1]
    for reps in (
        [(in_path % 1, 0, "Vanilla"), (out_path % 0, 0, "Addition")],
        [(in_path % 1, 0, "Vanilla"), ("block_output", 0, "Addition")],
        [("block_input", 1, "Addition"), (out_path % 0, 0, "Vanilla")],
    ):
        got, ref = _writes(name, reps)
        _check(got, ref)


class _Op(torch.nn.Module):
    def forward(self, x, *rest):
        return x


def test_insert_orders_ops_at_one_node_by_hook():
    """The pass alone: requests listed input-port first act output-port first; a tap listed before a
    write reads the node itself, one listed after reads the write."""
    from fxvene.passes import locate
    from fxvene.passes.rewrite import insert_interventions

    gm = fv.trace(_models("gpt2")[0], ("input_ids",)).gm
    node = locate.module_output(gm, "transformer.h.0")
    assert locate.module_input(gm, "transformer.h.1") is node

    def req(name, port, path, **kw):
        return dict(name=name, module=_Op(), node=node.name, port=port, region=path, **kw)

    new = insert_interventions(
        gm,
        [
            req("tap_in", "input", "transformer.h.1", collect=True),
            req("w_in", "input", "transformer.h.1"),
            req("tap_out", "output", "transformer.h.0", collect=True),
            req("w_out", "output", "transformer.h.0"),
            req("tap_last", "output", "transformer.h.0", collect=True),
        ],
    )
    arg = {
        n.target: n.args[0].name
        for n in new.graph.nodes
        if n.op == "call_module" and n.target in ("tap_in", "w_in", "tap_out", "w_out", "tap_last")
    }
    assert arg == {"tap_out": node.name, "w_out": node.name, "tap_last": "w_out", "tap_in": "w_out", "w_in": "w_out"}
    out = next(n for n in new.graph.nodes if n.op == "output")
    assert [n.target for n in out.args[0][-3:]] == ["tap_in", "tap_out", "tap_last"]  # taps in list order


# ----------------------------------------------------------------------------- items 6 and 11: reads


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize(
    "reps",
    [
        # one name: config order (one module, hooks in registration order)
        [("block_output", 0, "Collect"), ("block_output", 0, "Zero")],
        [("block_output", 0, "Zero"), ("block_output", 0, "Collect")],
        [("block_input", 1, "Collect"), ("block_input", 1, "Zero")],
        # two names: the output hook of block 0 fires before the pre-hook of block 1
        [("block_input", 1, "Collect"), ("block_output", 0, "Zero")],
        [("block_output", 0, "Zero"), ("block_input", 1, "Collect")],
        [("block_input", 1, "Zero"), ("block_output", 0, "Collect")],
        [("block_output", 0, "Collect"), ("block_input", 1, "Zero")],
    ],
    ids=lambda r: "-".join(f"{c}{L}{t}" for c, L, t in r),
)
def test_collect_reads_the_value_its_hook_would_see(name, reps):
    got, ref = _reads(name, reps)
    _check(got, ref)


@pytest.mark.parametrize(
    "reps",
    [
        [("transformer.h[0].input", 0, "Zero"), ("transformer.drop.output", 0, "Collect")],
        [("transformer.drop.output", 0, "Collect"), ("transformer.h[0].input", 0, "Zero")],
        [("transformer.h[0].input", 0, "Collect"), ("transformer.drop.output", 0, "Zero")],
        [("transformer.drop.output", 0, "Zero"), ("transformer.h[0].input", 0, "Collect")],
        [("block_input", 0, "Zero"), ("transformer.drop.output", 0, "Collect")],
    ],
    ids=lambda r: "-".join(f"{c}{t}" for c, _, t in r),
)
def test_gpt2_dropout_output_is_block_0_input(reps):
    got, ref = _reads("gpt2", reps)
    _check(got, ref)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize(
    "reps",
    [
        [("block_output", 0, "Vanilla"), ("block_input", 1, "Vanilla")],  # the getter's pre-hook sees the write
        [("block_input", 1, "Vanilla"), ("block_output", 0, "Vanilla")],  # the getter's hook fires first
        [("block_output", 0, "Vanilla"), ("block_output", 0, "Vanilla")],  # one hook: the setter came first
    ],
    ids=lambda r: "-".join(f"{c}{L}" for c, L, _ in r),
)
def test_serial_source_run_reads_in_hook_order(name, reps):
    """Serial mode: group 0's setter acts on source 1's run, where group 1's getter reads."""
    call = dict(
        base=_ids(5, b=1),
        sources=[_ids(6, b=1), _ids(7, b=1)],
        unit_locations={"source_0->source_1": (2, 3), "source_1->base": (3, 4)},
    )
    got = []
    for lib, model in zip((fv, pv), _models(name)):
        cfg = lib.IntervenableConfig(
            representations=[
                lib.RepresentationConfig(layer=L, component=c, intervention_type=getattr(lib, t + "Intervention"))
                for c, L, t in reps
            ],
            mode="serial",
        )
        got.append(lib.IntervenableModel(cfg, model)(**call)[1][0])
    _close(got[0], got[1])


# ----------------------------------------------------------------------------- pyvene's MLP and GRU


@pytest.fixture(scope="module")
def mlp_pair():
    cfg = dict(h_dim=8, n_layer=2, pdrop=0.0, num_classes=3)
    from pyvene.models.mlp.modelings_mlp import MLPConfig

    torch.manual_seed(11)
    _, _, theirs = pv.create_mlp_classifier(MLPConfig(**cfg))
    torch.manual_seed(11)
    _, _, ours = fv.create_mlp_classifier(fv.MLPConfig(**cfg))
    return ours.eval(), theirs.eval()


def _mlp_in(seed, b=3):
    return {"inputs_embeds": torch.randn(b, 1, 8, generator=torch.Generator().manual_seed(seed))}


@pytest.mark.parametrize(
    "reps",
    [
        [("block_input", 1, "Vanilla"), ("block_output", 0, "Addition")],
        [("block_output", 0, "Addition"), ("block_input", 1, "Vanilla")],
        [("h[1].input", 0, "Addition"), ("h[0].output", 0, "Vanilla")],
    ],
    ids=lambda r: "-".join(f"{c}{L}{t}" for c, L, t in r),
)
def test_mlp_writes(mlp_pair, reps):
    reps = [(c if "." not in c else "mlp." + c, L, t) for c, L, t in reps]
    call = dict(base=_mlp_in(1), sources=[_mlp_in(2), _mlp_in(3)], unit_locations={"sources->base": 0})
    got = _run(fv, mlp_pair[0], reps, **call)
    ref = _run(pv, mlp_pair[1], reps, **call)
    _check(got, ref)


@pytest.mark.parametrize(
    "reps",
    [
        [("block_output", 0, "Collect"), ("block_output", 0, "Zero")],
        [("block_input", 1, "Collect"), ("block_output", 0, "Zero")],
        [("block_input", 1, "Zero"), ("block_output", 0, "Collect")],
        [("mlp.h[1].input", 0, "Zero"), ("block_output", 0, "Collect")],
    ],
    ids=lambda r: "-".join(f"{c}{L}{t}" for c, L, t in r),
)
def test_mlp_reads(mlp_pair, reps):
    call = dict(base=_mlp_in(4), unit_locations={"base": 0})
    _check(_run(fv, mlp_pair[0], reps, **call), _run(pv, mlp_pair[1], reps, **call))


def test_gru_cell_output_then_next_cell_input():
    """Cell 0's output is cell 1's input at every step. pyvene (batch 1) feeds a zero source at the
    steps a setter is not given: Vanilla lists every step, Addition only the last (where cell 1's
    pre-hook write, which pyvene makes in place into cell 0's state, reaches no later step)."""
    cfg = dict(h_dim=6, n_layer=2)
    torch.manual_seed(4)
    _, _, theirs = pv.create_gru_classifier(pv.GRUConfig(**cfg))
    torch.manual_seed(4)
    _, _, ours = fv.create_gru_classifier(fv.GRUConfig(**cfg))
    g = torch.Generator().manual_seed(5)
    base, s1, s2 = ({"inputs_embeds": torch.randn(1, 5, 6, generator=g)} for _ in range(3))
    every, last = [list(range(5))], [[4]]
    for order in ((0, 1), (1, 0)):
        reps = [("cell_input", 1, "Addition"), ("cell_output", 0, "Vanilla")]
        locs = [last, every]
        reps, locs = [reps[i] for i in order], [locs[i] for i in order]
        res = []
        for lib, model in ((fv, ours), (pv, theirs)):
            cfg_ = lib.IntervenableConfig(
                representations=[
                    lib.RepresentationConfig(
                        layer=L, component=c, unit="t", intervention_type=getattr(lib, t + "Intervention")
                    )
                    for c, L, t in reps
                ]
            )
            im = lib.IntervenableModel(cfg_, model)
            srcs = [dict(s1), dict(s2)]
            res.append(im(base=dict(base), sources=srcs, unit_locations={"sources->base": (locs, locs)})[1][0])
        _close(res[0], res[1])
