"""The factual and counterfactual datasets of a CausalModel (its ``generate_*_dataset`` methods).

The samplers are called, and the model run, in pyvene 0.1.8's order, so a seeded run gives
pyvene's examples. One deliberate difference: ``input_function``/``output_function`` given to
``generate_counterfactual_dataset`` are used (pyvene accepts and ignores them there).
"""

from __future__ import annotations

import torch

from fxvene.causal import checks


def _check_count(arg, n, minimum):
    if isinstance(n, bool) or not isinstance(n, int) or n < minimum:
        raise ValueError(f"{arg}: expected an integer >= {minimum}, got {n!r}")


def _check_callable(arg, fn):
    if not callable(fn):
        raise TypeError(f"{arg}: expected a callable, got {type(fn).__name__}")
    return fn


def factual_dataset(model, size, sampler, filter, device, input_function, output_function, return_tensors):
    _check_count("size", size, 0)
    sampler = _check_callable("sampler", model.sample_input if sampler is None else sampler)
    encode_in = _check_callable("input_function", model.input_to_tensor if input_function is None else input_function)
    encode_out = _check_callable(
        "output_function", model.output_to_tensor if output_function is None else output_function
    )
    examples = []
    while len(examples) < size:
        input = sampler()
        if filter is not None and not filter(input):
            continue
        output = model.run_forward(input)
        if return_tensors:
            examples.append({"input_ids": encode_in(input).to(device), "labels": encode_out(output).to(device)})
        else:
            examples.append({"input_ids": input, "labels": output})
    return examples


def counterfactual_dataset(
    model,
    size,
    intervention_id,
    batch_size,
    sampler,
    intervention_sampler,
    filter,
    device,
    input_function,
    output_function,
    return_tensors,
):
    _check_count("size", size, 0)
    _check_count("batch_size", batch_size, 1)
    _check_callable("intervention_id", intervention_id)
    sampler = _check_callable("sampler", model.sample_input if sampler is None else sampler)
    draw_intervention = _check_callable(
        "intervention_sampler", model.sample_intervention if intervention_sampler is None else intervention_sampler
    )
    encode_in = _check_callable("input_function", model.input_to_tensor if input_function is None else input_function)
    encode_out = _check_callable(
        "output_function", model.output_to_tensor if output_function is None else output_function
    )
    # every example carries one source slot per intermediate variable
    n_slots = sum(1 for v in model.variables if v not in model.inputs and v not in model.outputs)

    examples = []
    while len(examples) < size:
        intervention = draw_intervention()
        checks.check_setting("the sampled intervention", intervention, model._names)
        if filter is not None and not filter(intervention):
            continue
        for _ in range(batch_size):
            base = sampler()
            sources, by_var = [], {}
            for var in model.variables:
                if var not in intervention:
                    continue
                # a source input on which var has the intervention's value
                source = sampler(output_var=var, output_var_value=intervention[var])
                sources.append(encode_in(source) if return_tensors else source)
                by_var[var] = source
            padding = n_slots - len(sources)
            if return_tensors:
                if not sources and padding <= 0:
                    raise ValueError(
                        "generate_counterfactual_dataset: an empty intervention on a model with no "
                        "intermediate variable leaves no source to stack"
                    )
                sources += [torch.zeros(encode_in(base).shape) for _ in range(padding)]
                examples.append(
                    {
                        "labels": encode_out(model.run_interchange(base, by_var)).to(device),
                        "base_labels": encode_out(model.run_forward(base)).to(device),
                        "input_ids": encode_in(base).to(device),
                        "source_input_ids": torch.stack(sources).to(device),
                        "intervention_id": torch.tensor([intervention_id(intervention)]).to(device),
                    }
                )
            else:
                sources += [{} for _ in range(padding)]
                examples.append(
                    {
                        "labels": model.run_interchange(base, by_var),
                        "base_labels": model.run_forward(base),
                        "input_ids": base,
                        "source_input_ids": sources,
                        "intervention_id": [intervention_id(intervention)],
                    }
                )
    return examples
