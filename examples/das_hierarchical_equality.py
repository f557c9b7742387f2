"""pyvene's DAS tutorial (DAS_Main_Introduction.ipynb) at CPU scale, with ``import fxvene as pv``.

The task is hierarchical equality: four entities W, X, Y, Z (random vectors) and the label
O = (W == X) == (Y == Z). The high-level causal model has two intermediate variables,
WX = (W == X) and YZ = (Y == Z). An interchange intervention replaces a variable of the base
input with its value on a source input; interchange intervention accuracy (IIA) is how often the
network, patched at the hypothesised location, predicts the counterfactual label.

1. A handcrafted MLP computes WX in hidden units [0, 4) and YZ in [4, 8) of its first layer.
   Two VanillaInterventions with ``subspace_partition=[[0, 4], [4, 8]]`` reach IIA 1.00.
2. An MLP trained on the task (embedding 4, hidden 16, 3 layers) hides WX and YZ in a learned
   basis. Distributed alignment search (two RotatedSpaceInterventions sharing one 16x16 rotation
   through ``intervention_link_key``, WX in rotated dims [0, 8), YZ in [8, 16)) learns that basis;
   held-out IIA reaches >= 0.90 (pyvene's GPU tutorial: 0.97 after 10 epochs of 1.28M examples).

Whether a *trained* MLP computes WX and YZ in separable subspaces of its first layer depends on
the training run: over MLP seeds 0-5 (3000 steps, same DAS settings) held-out IIA was 0.61, 0.91,
0.98, 0.95, 1.00 and 0.80; the low ones have first-layer units that read both entity pairs. The
default ``--mlp-seed 4`` is one whose first layer aligns; try others to see DAS say "no".

The models are small ``transformers.PreTrainedModel`` subclasses fed ``inputs_embeds``; fxvene
traces them like any other model, and components are module paths (``mlp.layers[0].output``).
The data is generated directly (no CausalModel).

    python examples/das_hierarchical_equality.py            # full run (about a minute on a CPU)
    python examples/das_hierarchical_equality.py --quick    # CI smoke test (< 60 s)
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

import fxvene as pv

# ------------------------------------------------------------------------------------------ model


class HierEqConfig(PretrainedConfig):
    model_type = "fxvene_hier_eq_mlp"

    def __init__(self, input_dim=16, h_dims=(16, 16, 16), n_labels=2, **kwargs):
        self.input_dim = input_dim
        self.h_dims = list(h_dims)
        self.n_labels = n_labels
        self.hidden_size = input_dim  # width of inputs_embeds
        super().__init__(**kwargs)


class Block(nn.Module):
    def __init__(self, d_in, d_out):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.linear(x))


class Stack(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.layers = nn.ModuleList(Block(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class HierEqMLP(PreTrainedModel):
    """inputs_embeds (batch, 1, 4 * embedding_dim) -> logits (batch, 1, 2)."""

    config_class = HierEqConfig
    base_model_prefix = "mlp"

    def __init__(self, config):
        super().__init__(config)
        self.mlp = Stack([config.input_dim] + list(config.h_dims))
        self.head = nn.Linear(config.h_dims[-1], config.n_labels)
        self.post_init()

    def _init_weights(self, module):
        # PyTorch's default initialisation on every transformers line (5.x would otherwise draw
        # N(0, 0.02) weights, with which this small ReLU stack often fails to train)
        if isinstance(module, nn.Linear):
            module.reset_parameters()

    def forward(self, inputs_embeds=None, attention_mask=None, labels=None, use_cache=None, return_dict=None,
                **kwargs):
        return SequenceClassifierOutput(logits=self.head(self.mlp(inputs_embeds)))


# ------------------------------------------------------------------------------------------ data


def sample(n, emb, gen):
    """n examples: the (n, 1, 4*emb) input, and the two equality bits (WX, YZ)."""
    ents = torch.rand(n, 4, emb, generator=gen) * 2 - 1
    wx = torch.rand(n, generator=gen) < 0.5
    yz = torch.rand(n, generator=gen) < 0.5
    ents[wx, 1] = ents[wx, 0]
    ents[yz, 3] = ents[yz, 2]
    return ents.reshape(n, 1, 4 * emb), wx, yz


def label(wx, yz):
    return (wx == yz).long()


def counterfactual_batch(n, emb, gen, which):
    """Base, sources, and the counterfactual label for intervention ``which``:
    0 = WX from source 0, 1 = YZ from source 1, 2 = both."""
    base, bwx, byz = sample(n, emb, gen)
    s0, s0wx, _ = sample(n, emb, gen)
    s1, _, s1yz = sample(n, emb, gen)
    wx = s0wx if which in (0, 2) else bwx
    yz = s1yz if which in (1, 2) else byz
    sources = [{"inputs_embeds": s0} if which in (0, 2) else None,
               {"inputs_embeds": s1} if which in (1, 2) else None]
    return {"inputs_embeds": base}, sources, label(wx, yz)


def intervene(intervenable, base, sources, which, n):
    """The interchange intervention: WX is subspace 0 of the first intervention, YZ subspace 1 of the second."""
    subspaces = [[[0]] * n if which in (0, 2) else None, [[1]] * n if which in (1, 2) else None]
    _, out = intervenable(base, sources, {"sources->base": 0}, subspaces=subspaces)
    return out.logits[:, 0]


@torch.no_grad()
def iia(intervenable, emb, n, gen, batch=1024):
    res = {}
    for which in (0, 1, 2):
        correct = 0
        for start in range(0, n, batch):
            m = min(batch, n - start)
            base, sources, y = counterfactual_batch(m, emb, gen, which)
            correct += (intervene(intervenable, base, sources, which, m).argmax(-1) == y).sum().item()
        res[("WX", "YZ", "both")[which]] = correct / n
    res["all"] = sum(res.values()) / 3
    return res


# ------------------------------------------------------------------------------------------ 1. handcrafted


def handcrafted_mlp(k=1e4):
    """Layer 0: |W-X| in units [0, 4), |Y-Z| in [4, 8) (as ReLU(a-b), ReLU(b-a)); layer 1: the two
    equality bits; layer 2: both-equal / both-different; head: O."""
    model = HierEqMLP(HierEqConfig(input_dim=8, h_dims=(8, 2, 2))).eval()
    l0, l1, l2 = (b.linear for b in model.mlp.layers)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        eye = torch.eye(2)
        for pair, (a, b) in enumerate(((0, 1), (2, 3))):  # entities (W, X) and (Y, Z), 2 dims each
            r = 4 * pair
            l0.weight[r:r + 2, 2 * a:2 * a + 2] = eye
            l0.weight[r:r + 2, 2 * b:2 * b + 2] = -eye
            l0.weight[r + 2:r + 4, 2 * a:2 * a + 2] = -eye
            l0.weight[r + 2:r + 4, 2 * b:2 * b + 2] = eye
            l1.weight[pair, r:r + 4] = -k  # e = ReLU(1 - k |a - b|_1): 1 iff equal
            l1.bias[pair] = 1.0
        l2.weight[:] = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])  # both equal / both different
        l2.bias[:] = torch.tensor([-1.0, 1.0])
        model.head.weight[:] = torch.tensor([[-1.0, -1.0], [1.0, 1.0]])
        model.head.bias[:] = torch.tensor([0.5, -0.5])
    return model


def run_handcrafted(n_eval, gen):
    model = handcrafted_mlp()
    x, wx, yz = sample(n_eval, 2, gen)
    with torch.no_grad():
        acc = (model(inputs_embeds=x).logits[:, 0].argmax(-1) == label(wx, yz)).float().mean().item()
    rep = dict(layer=0, component="mlp.layers[0].output", unit="pos", max_number_of_units=1,
               subspace_partition=[[0, 4], [4, 8]])
    config = pv.IntervenableConfig(representations=[pv.RepresentationConfig(**rep), pv.RepresentationConfig(**rep)],
                                   intervention_types=pv.VanillaIntervention)
    intervenable = pv.IntervenableModel(config, model, use_fast=True)
    return acc, iia(intervenable, 2, n_eval, gen, batch=16 if n_eval <= 256 else 256)


# ------------------------------------------------------------------------------------------ 2. trained + DAS


def train_mlp(steps, batch, seed, lr=1e-3):
    """Train on fresh random entities each step; test on 10000 inputs with new entities."""
    gen = torch.Generator().manual_seed(100 + seed)
    torch.manual_seed(seed)
    model = HierEqMLP(HierEqConfig(input_dim=16, h_dims=(16, 16, 16)))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        x, wx, yz = sample(batch, 4, gen)
        loss = nn.functional.cross_entropy(model(inputs_embeds=x).logits[:, 0], label(wx, yz))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, wx, yz = sample(10000, 4, gen)  # new entity vectors
    with torch.no_grad():
        acc = (model(inputs_embeds=x).logits[:, 0].argmax(-1) == label(wx, yz)).float().mean().item()
    return model, acc


def run_das(model, steps, batch, gen, lr=1e-3, log_every=0):
    torch.manual_seed(0)
    rep = dict(layer=0, component="mlp.layers[0].output", unit="pos", max_number_of_units=1,
               subspace_partition=[[0, 8], [8, 16]], intervention_link_key=0)
    config = pv.IntervenableConfig(representations=[pv.RepresentationConfig(**rep), pv.RepresentationConfig(**rep)],
                                   intervention_types=pv.RotatedSpaceIntervention)
    intervenable = pv.IntervenableModel(config, model, use_fast=True)
    intervenable.disable_model_gradients()
    n_params = intervenable.count_parameters()
    opt = torch.optim.Adam(intervenable.get_trainable_parameters(), lr=lr)
    for step in range(steps):
        which = step % 3
        base, sources, y = counterfactual_batch(batch, 4, gen, which)
        # the rotation is a parametrization: compute it once per step instead of once per use
        with torch.nn.utils.parametrize.cached():
            logits = intervene(intervenable, base, sources, which, batch)
            loss = nn.functional.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
        opt.step()
        if log_every and (step + 1) % log_every == 0:
            acc = (logits.argmax(-1) == y).float().mean().item()
            print(f"  DAS step {step + 1:5d}  loss {loss.item():.4f}  batch IIA {acc:.3f}", flush=True)
    return intervenable, n_params


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="reduced sizes for a CI smoke test (< 60 s)")
    ap.add_argument("--seed", type=int, default=0, help="data seed")
    ap.add_argument("--mlp-seed", type=int, default=4, help="seed of the trained MLP (see the note above)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # tiny tensors: more threads only add latency
    gen = torch.Generator().manual_seed(args.seed)
    if args.quick:
        n_eval, mlp_steps, das_steps, das_batch, das_lr, n_test = 256, 1500, 600, 256, 1e-2, 768
    else:
        n_eval, mlp_steps, das_steps, das_batch, das_lr, n_test = 2048, 3000, 3000, 512, 3e-3, 12800

    t0 = time.time()
    hand_acc, hand = run_handcrafted(n_eval, gen)
    print(f"handcrafted MLP: task accuracy {hand_acc:.2f} on {n_eval} inputs")
    print(f"handcrafted MLP, Vanilla + subspace_partition at layer 0: IIA "
          f"WX {hand['WX']:.2f}  YZ {hand['YZ']:.2f}  both {hand['both']:.2f}  ({time.time() - t0:.1f} s)")

    t1 = time.time()
    model, acc = train_mlp(mlp_steps, 1024, args.mlp_seed)
    print(f"trained MLP (embedding 4, hidden 16, 3 layers): test accuracy {acc:.4f} on 10000 inputs with new "
          f"entities ({time.time() - t1:.1f} s)")

    t2 = time.time()
    intervenable, n_params = run_das(model, das_steps, das_batch, gen, lr=das_lr, log_every=0 if args.quick else 500)
    res = iia(intervenable, 4, n_test, gen)
    print(f"DAS (RotatedSpace, linked, {n_params} trainable parameters, {das_steps} steps of {das_batch}): "
          f"held-out IIA WX {res['WX']:.3f}  YZ {res['YZ']:.3f}  both {res['both']:.3f}  all {res['all']:.3f} "
          f"on {n_test} examples each ({time.time() - t2:.1f} s)")
    print(f"total {time.time() - t0:.1f} s")
    return {"handcrafted_accuracy": hand_acc, "handcrafted_iia": hand, "mlp_accuracy": acc, "das_iia": res}


if __name__ == "__main__":
    main()
