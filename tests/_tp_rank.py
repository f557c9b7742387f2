"""One rank of tests/test_quant_tp.py's tensor-parallel test (run by torchrun, transformers 5): loads the
saved tiny Llama with transformers' ``tp_plan="auto"``, runs its plain forward, tries fxvene on it and writes
the logits (safetensors) and what fxvene said (JSON)."""

import json
import os
import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM
from transformers.distributed import DistributedConfig

import fxvene as pv


def inputs(seed, b=2, n=7, vocab=50):
    ids = torch.randint(1, vocab, (b, n), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def main(path, out):
    torch.set_num_threads(1)
    dc = DistributedConfig(tp_plan="auto")
    model = AutoModelForCausalLM.from_pretrained(path, distributed_config=dc, attn_implementation="eager").eval()
    rank = dist.get_rank()
    with torch.no_grad():
        logits = model(**inputs(1)).logits
    cfg = pv.IntervenableConfig(
        [{"layer": 0, "component": "block_output", "intervention_type": pv.CollectIntervention}]
    )
    calls = {
        "IntervenableModel": lambda: pv.IntervenableModel(cfg, model),
        "causal_trace": lambda: pv.causal_trace(model, inputs(2, b=1), subject_positions=[1], target_token=3),
    }
    said = {}
    for name, call in calls.items():
        try:
            call()
            said[name] = None
        except ValueError as e:
            said[name] = str(e)
    info = {"said": said, "dtensors": sum(isinstance(p, DTensor) for p in model.parameters())}
    save_file({"logits": logits.contiguous()}, os.path.join(out, f"rank{rank}.safetensors"))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(info, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
