"""pyvene's DAS tutorial (DAS_Main_Introduction.ipynb) at CPU scale, with ``import fxvene as pv``.

The task is hierarchical equality: four entities W, X, Y, Z (vectors) and the label
O = (W == X) == (Y == Z). The high-level algorithm is a ``pv.CausalModel`` with two intermediate
variables, WX = (W == X) and YZ = (Y == Z). An interchange intervention sets a variable of the
base input to its value on a source input; the causal model gives the counterfactual label, and
interchange intervention accuracy (IIA) is how often the network, patched at the hypothesised
location, predicts it. The causal model generates every dataset below, as in the tutorial.

1. A handcrafted MLP (pyvene's ``create_mlp_classifier``, weights set by hand) computes WX in the
   first layer's units [0, 4) and YZ in [4, 8). Two VanillaInterventions with
   ``subspace_partition=[[0, 4], [4, 8]]`` reach IIA 1.00 on the counterfactual dataset that
   ``generate_counterfactual_dataset`` samples with ``sample_input_tree_balanced``.
2. An MLP trained on the task (entities of 4 dimensions, hidden 16, 3 layers) hides WX and YZ in
   a learned basis. Distributed alignment search (two RotatedSpaceInterventions sharing one 16x16
   rotation through ``intervention_link_key``, WX in rotated dims [0, 8), YZ in [8, 16)) learns
   that basis. Test IIA (counterfactual examples of unseen entities): 0.999 in the full run, 0.91
   with ``--quick`` (pyvene's GPU tutorial: 0.97 after 10 epochs of 1.28M examples).

Whether a *trained* MLP computes WX and YZ in separable subspaces of its first layer depends on
the training run; ``--mlp-seed`` picks the run. With the ``--quick`` sizes, test IIA over MLP
seeds 0-7 was 0.88, 0.80, 0.88, 0.69, 0.71, 0.91, 0.77 and 0.69 (train IIA is the same: DAS has
converged; the low ones have first-layer units that mix both entity pairs). The default seed 5 is
the one that aligns best; try others to see DAS say "only partly".

    python examples/das_hierarchical_equality.py            # full run (about a minute on a quiet CPU)
    python examples/das_hierarchical_equality.py --quick    # CI smoke test (< 30 s)
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

import fxvene as pv

# ------------------------------------------------------------------------------------------ causal model


def randvec(n, lower=-1.0, upper=1.0):
    """An entity: n coordinates drawn from Python's ``random``, rounded to two decimals."""
    return np.array([round(random.uniform(lower, upper), 2) for _ in range(n)])


def equality_model(entities):
    """The algorithm A: WX = (W == X), YZ = (Y == Z), O = (WX == YZ); inputs range over ``entities``."""
    variables = ["W", "X", "Y", "Z", "WX", "YZ", "O"]
    values = {v: entities for v in "WXYZ"}
    values.update(WX=[True, False], YZ=[True, False], O=[True, False])
    parents = {"W": [], "X": [], "Y": [], "Z": [], "WX": ["W", "X"], "YZ": ["Y", "Z"], "O": ["WX", "YZ"]}

    def default_entity():
        return entities[0]

    functions = {v: default_entity for v in "WXYZ"}
    functions.update(WX=np.array_equal, YZ=np.array_equal, O=lambda wx, yz: wx == yz)
    pos = {"W": (0.2, 0), "X": (1, 0.1), "Y": (2, 0.2), "Z": (2.8, 0), "WX": (1, 2), "YZ": (2, 2), "O": (1.5, 3)}
    return pv.CausalModel(variables, values, parents, functions, pos=pos)


def intervention_id(intervention):
    """0: WX is intervened on, 1: YZ, 2: both (the tutorial's ids)."""
    if "WX" in intervention and "YZ" in intervention:
        return 2
    return 0 if "WX" in intervention else 1


def fresh_entity_sampler(dim):
    """Inputs with new random entities each call (the tutorial's ``input_sampler``); with
    ``output_var``/``output_var_value`` (as ``generate_counterfactual_dataset`` calls it for a
    source) the input gives that variable that value."""

    def sample(output_var=None, output_var_value=None):
        a, b, c, d = (randvec(dim) for _ in range(4))
        if output_var is None:
            return random.choice(
                [dict(W=a, X=b, Y=c, Z=d), dict(W=a, X=a, Y=b, Z=b), dict(W=a, X=a, Y=c, Z=d), dict(W=a, X=b, Y=c, Z=c)]
            )
        if output_var == "WX":  # YZ is free
            x = a if output_var_value else b
            return random.choice([dict(W=a, X=x, Y=c, Z=d), dict(W=a, X=x, Y=c, Z=c)])
        z = c if output_var_value else d  # output_var == "YZ"; WX is free
        return random.choice([dict(W=a, X=b, Y=c, Z=z), dict(W=a, X=a, Y=c, Z=z)])

    return sample


def stack(dataset):
    """The list of example dicts as one dict of stacked tensors."""
    return {k: torch.stack([ex[k] for ex in dataset]) for k in dataset[0]}


# ------------------------------------------------------------------------------------------ interventions


def counterfactual_logits(intervenable, base, sources, iid, subspaces):
    """Logits of ``base`` (b, d) with WX (intervention 0) and/or YZ (intervention 1) taken from the
    sources (b, slots, d), as the tutorial's loop does for each ``intervention_id``."""
    b = base.shape[0]
    at = [[0]] * b
    if iid == 2:
        srcs = [sources[:, 0], sources[:, 1]]
    elif iid == 0:
        srcs = [sources[:, 0], None]
    else:
        srcs = [None, sources[:, 0]]
    locations = [at if s is not None else None for s in srcs]
    _, out = intervenable(
        {"inputs_embeds": base.unsqueeze(1)},
        [None if s is None else {"inputs_embeds": s.unsqueeze(1)} for s in srcs],
        {"sources->base": (locations, locations)},
        subspaces=[[sub] * b if s is not None else None for s, sub in zip(srcs, subspaces)],
    )
    return out[0]


@torch.no_grad()
def iia(intervenable, data, batch_size, subspaces):
    """IIA overall and per intervention id, batch by batch (each batch shares one intervention)."""
    hits, counts = torch.zeros(3), torch.zeros(3)
    for start in range(0, len(data["input_ids"]), batch_size):
        rows = slice(start, start + batch_size)
        iid = int(data["intervention_id"][start])
        logits = counterfactual_logits(
            intervenable, data["input_ids"][rows], data["source_input_ids"][rows], iid, subspaces
        )
        hits[iid] += (logits.argmax(-1) == data["labels"][rows, 0].long()).sum()
        counts[iid] += logits.shape[0]
    per = hits / counts.clamp(min=1)
    return {"WX": per[0].item(), "YZ": per[1].item(), "both": per[2].item(), "all": (hits.sum() / counts.sum()).item()}


# ------------------------------------------------------------------------------------------ 1. handcrafted


def handcrafted_mlp(k=1e4):
    """pyvene's MLP classifier (h_dim 8, 3 layers) with hand-set weights. Layer 0: |W-X| in units
    [0, 4) and |Y-Z| in [4, 8) (as ReLU(a-b), ReLU(b-a) per coordinate); layer 1: the two equality
    bits, e = ReLU(1 - k |a-b|_1); layer 2: both-equal / both-different; score: O."""
    config = pv.MLPConfig(h_dim=8, activation_function="relu", n_layer=3, num_classes=2, pdrop=0.0)
    _, _, model = pv.create_mlp_classifier(config)
    l0, l1, l2 = (block.ff1 for block in model.mlp.h)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        eye = torch.eye(2)
        for pair, (a, b) in enumerate(((0, 1), (2, 3))):  # entities (W, X) and (Y, Z), 2 coordinates each
            r = 4 * pair
            l0.weight[r : r + 2, 2 * a : 2 * a + 2] = eye
            l0.weight[r : r + 2, 2 * b : 2 * b + 2] = -eye
            l0.weight[r + 2 : r + 4, 2 * a : 2 * a + 2] = -eye
            l0.weight[r + 2 : r + 4, 2 * b : 2 * b + 2] = eye
            l1.weight[pair, r : r + 4] = -k
            l1.bias[pair] = 1.0
        l2.weight[:2, :2] = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
        l2.bias[:2] = torch.tensor([-1.0, 1.0])
        model.score.weight[:, :2] = torch.tensor([[-1.0, -1.0], [1.0, 1.0]])  # class 1 is O = True
        model.score.bias[:] = torch.tensor([0.5, -0.5])
    return model.eval()


def run_handcrafted(causal, n):
    model = handcrafted_mlp()
    factual = stack(causal.generate_factual_dataset(n, causal.sample_input_tree_balanced))
    with torch.no_grad():
        preds = model(inputs_embeds=factual["input_ids"])[0].argmax(-1)
    acc = (preds == factual["labels"][:, 0].long()).float().mean().item()

    rep = pv.RepresentationConfig(0, "block_output", subspace_partition=[[0, 4], [4, 8]])
    config = pv.IntervenableConfig(
        model_type=type(model), representations=[rep, rep], intervention_types=pv.VanillaIntervention
    )
    intervenable = pv.IntervenableModel(config, model)
    batch = 16
    data = stack(
        causal.generate_counterfactual_dataset(n, intervention_id, batch, sampler=causal.sample_input_tree_balanced)
    )
    return acc, iia(intervenable, data, batch, subspaces=([0], [1]))


# ------------------------------------------------------------------------------------------ 2. trained + DAS


def train_mlp(causal, test_causal, n_train, epochs, seed, batch=256, lr=3e-3):
    """Train on a factual dataset of fresh entities; test on the test causal model's unseen entities."""
    sampler = fresh_entity_sampler(4)
    train = stack(causal.generate_factual_dataset(n_train, sampler))
    test = stack(test_causal.generate_factual_dataset(2000, test_causal.sample_input_tree_balanced))
    config = pv.MLPConfig(h_dim=16, activation_function="relu", n_layer=3, num_classes=2, pdrop=0.0)
    _, _, model = pv.create_mlp_classifier(config)
    # PyTorch's default initialisation, which pyvene's MLP gets on transformers 4.x; on 5.x the
    # model's post_init draws N(0, 0.02) weights and zero biases, from which this small ReLU stack
    # often does not train. Drawn here, the weights are the same on both lines.
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.reset_parameters()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n_train)
        for start in range(0, n_train, batch):
            rows = order[start : start + batch]
            loss = F.cross_entropy(model(inputs_embeds=train["input_ids"][rows])[0], train["labels"][rows, 0].long())
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        preds = model(inputs_embeds=test["input_ids"])[0].argmax(-1)
    return model, (preds == test["labels"][:, 0].long()).float().mean().item()


def run_das(model, train, batch, epochs, lr, log=False):
    torch.manual_seed(0)
    rep = pv.RepresentationConfig(0, "block_output", "pos", 1, subspace_partition=None, intervention_link_key=0)
    config = pv.IntervenableConfig(
        model_type=type(model), representations=[rep, rep], intervention_types=pv.RotatedSpaceIntervention
    )
    intervenable = pv.IntervenableModel(config, model, use_fast=True)
    intervenable.disable_model_gradients()
    n_params = intervenable.count_parameters()
    opt = torch.optim.Adam(intervenable.get_trainable_parameters(), lr=lr)
    subspaces = (list(range(0, 8)), list(range(8, 16)))  # WX in rotated dims [0, 8), YZ in [8, 16)
    n_batches = len(train["input_ids"]) // batch
    for epoch in range(epochs):
        hits = 0
        for b in torch.randperm(n_batches).tolist():  # batches in random order, as the tutorial's sampler
            rows = slice(b * batch, (b + 1) * batch)
            labels = train["labels"][rows, 0].long()
            # the rotation is a parametrization: compute it once per step instead of once per use
            with torch.nn.utils.parametrize.cached():
                logits = counterfactual_logits(
                    intervenable,
                    train["input_ids"][rows],
                    train["source_input_ids"][rows],
                    int(train["intervention_id"][b * batch]),
                    subspaces,
                )
                loss = F.cross_entropy(logits, labels)
                opt.zero_grad()
                loss.backward()
            opt.step()
            hits += (logits.argmax(-1) == labels).sum().item()
        if log:
            print(
                f"  DAS epoch {epoch + 1:2d}  last loss {loss.item():.4f}  train IIA {hits / (n_batches * batch):.3f}",
                flush=True,
            )
    return intervenable, n_params, subspaces


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="reduced sizes for a CI smoke test (< 30 s)")
    ap.add_argument("--seed", type=int, default=42, help="seed of Python's random (entities and datasets)")
    ap.add_argument("--mlp-seed", type=int, default=5, help="seed of the trained MLP (see the note above)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # tiny tensors: more threads only add latency
    random.seed(args.seed)
    np.random.seed(args.seed)
    if args.quick:
        n_hand, n_mlp, mlp_epochs, n_das, das_batch, das_epochs, das_lr, n_test = (
            256,
            65536,
            8,
            6144,
            64,
            15,
            3e-3,
            1536,
        )
    else:
        n_hand, n_mlp, mlp_epochs, n_das, das_batch, das_epochs, das_lr, n_test = (
            2048,
            262144,
            10,
            64000,
            128,
            10,
            3e-3,
            12800,
        )

    t0 = time.time()
    causal = equality_model([randvec(2) for _ in range(20)])
    print("causal model timesteps:", causal.timesteps)
    base = {
        "W": causal.values["W"][0],
        "X": causal.values["W"][0],
        "Y": causal.values["W"][1],
        "Z": causal.values["W"][3],
    }
    source = {
        "W": causal.values["W"][0],
        "X": causal.values["W"][1],
        "Y": causal.values["W"][2],
        "Z": causal.values["W"][2],
    }
    print(
        f"O on the base: {causal.run_forward(base)['O']}; with WX from the source: "
        f"{causal.run_interchange(base, {'WX': source})['O']}"
    )

    hand_acc, hand = run_handcrafted(causal, n_hand)
    print(f"handcrafted MLP: task accuracy {hand_acc:.2f} on {n_hand} inputs")
    print(
        f"handcrafted MLP, Vanilla + subspace_partition at layer 0: IIA "
        f"WX {hand['WX']:.2f}  YZ {hand['YZ']:.2f}  both {hand['both']:.2f}  ({time.time() - t0:.1f} s)"
    )

    t1 = time.time()
    causal = equality_model([randvec(2) for _ in range(20)])  # the training data uses fresh entities anyway
    test_causal = equality_model([randvec(4) for _ in range(100)])  # entities the MLP never saw
    model, acc = train_mlp(causal, test_causal, n_mlp, mlp_epochs, args.mlp_seed)
    print(
        f"trained MLP (entities of 4, hidden 16, 3 layers, {n_mlp} examples x {mlp_epochs} epochs): "
        f"test accuracy {acc:.4f} on 2000 inputs with unseen entities ({time.time() - t1:.1f} s)"
    )

    t2 = time.time()
    sampler = fresh_entity_sampler(4)
    train = stack(causal.generate_counterfactual_dataset(n_das, intervention_id, das_batch, sampler=sampler))
    test = stack(test_causal.generate_counterfactual_dataset(n_test, intervention_id, das_batch, sampler=sampler))
    t_data = time.time() - t2
    intervenable, n_params, subspaces = run_das(model, train, das_batch, das_epochs, das_lr, log=not args.quick)
    res = iia(intervenable, test, das_batch, subspaces)
    print(
        f"DAS (RotatedSpace, linked, {n_params} trainable parameters, {das_epochs} epochs of {n_das}): "
        f"test IIA WX {res['WX']:.3f}  YZ {res['YZ']:.3f}  both {res['both']:.3f}  all {res['all']:.3f} "
        f"on {n_test} examples ({time.time() - t2:.1f} s, of which {t_data:.1f} s generating the data)"
    )
    print(f"total {time.time() - t0:.1f} s")
    return {"handcrafted_accuracy": hand_acc, "handcrafted_iia": hand, "mlp_accuracy": acc, "das_iia": res}


if __name__ == "__main__":
    main()
