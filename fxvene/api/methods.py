"""IntervenableModel's parameters, training switches, inspection, generation and persistence:
pyvene 0.1.8's public methods, most delegating to ``fxvene.inspection.tables``, ``fxvene.inspection.diff``,
``fxvene.api.generation`` and ``fxvene.api.serialization``. ``ModelMethods`` holds them for
``fxvene.api.intervenable.IntervenableModel``.

Split from ``fxvene.api.intervenable``.
"""

from __future__ import annotations

from fxvene.interventions import TrainableIntervention


class ModelMethods:
    """Parameters, train/eval, inspection, generate and save/load of
    ``fxvene.api.intervenable.IntervenableModel`` (a mixin)."""

    def named_parameters(self, prefix="", recurse=True, remove_duplicate=True):
        """pyvene 0.1.8's naming: ``<key>.<name>`` for trainable interventions' parameters, then
        ``model.<name>`` for the model's grad-enabled ones (HF Trainer groups weight decay by these
        names). A parameter shared by linked interventions is listed once."""
        seen = set()
        pre = f"{prefix}." if prefix else ""
        for k, iv in self.interventions.items():
            if isinstance(iv, TrainableIntervention):
                for n, p in iv.named_parameters():
                    if remove_duplicate and id(p) in seen:
                        continue
                    seen.add(id(p))
                    yield f"{pre}{k}.{n}", p
        for n, p in self.model.named_parameters():
            if p.requires_grad and not (remove_duplicate and id(p) in seen):
                seen.add(id(p))
                yield f"{pre}model.{n}", p

    # ------------------------------------------------------------------ trainable side

    def get_trainable_parameters(self):
        # Each parameter once: pyvene 0.1.8 lists a linked (shared) intervention's parameters once per
        # key, so an optimizer built from its list updates shared weights twice per step.
        params, seen = [], set()
        for iv in self.interventions.values():
            if isinstance(iv, TrainableIntervention):
                for p in iv.parameters():
                    if id(p) not in seen:
                        seen.add(id(p))
                        params.append(p)
        params += [p for p in self.model.parameters() if p.requires_grad and id(p) not in seen]
        return params

    def count_parameters(self, include_model=False):
        seen, total = set(), 0
        for iv in self.interventions.values():
            if isinstance(iv, TrainableIntervention) and id(iv) not in seen:
                seen.add(id(iv))
                total += sum(p.numel() for p in iv.parameters() if p.requires_grad)
        if include_model:
            total += sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return total

    def set_temperature(self, temp):
        for iv in self.interventions.values():
            if hasattr(iv, "set_temperature"):
                iv.set_temperature(temp)

    def set_device(self, device, set_model=True):
        for iv in self.interventions.values():
            iv.to(device)
        if set_model:
            self.model.to(device)

    def train(self, mode=True):
        for iv in self.interventions.values():
            iv.train(mode)
        self.model.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self, set_to_none=True):
        for iv in self.interventions.values():
            iv.zero_grad(set_to_none=set_to_none)

    set_zero_grad = zero_grad

    # ------------------------------------------------------------------ inspection (fxvene.inspection.tables, fxvene.inspection.diff)

    def sites(self, signature=None):
        """Where each intervention acts: a list of ``fxvene.inspection.tables.SiteInfo`` (node, module, shape, ...)."""
        from fxvene.api.views import sites

        return sites(self, signature=signature)

    def print_sites(self, file=None, signature=None):
        """Print the site table (before a run, to check what will be changed); returns the rows."""
        from fxvene.api.views import print_sites

        return print_sites(self, file=file, signature=signature)

    def rewritten_graph(self, plan="base", group=0, signature=None, active=None, collect=None):
        """``(traced, gm)``: the rewritten GraphModule a call runs; see ``fxvene.api.views.rewritten_graph``."""
        from fxvene.api.views import rewritten_graph

        return rewritten_graph(self, plan=plan, group=group, signature=signature, active=active, collect=collect)

    def graph_diff(self, plan="base", group=0, signature=None, active=None, collect=None):
        """The ``fxvene.inspection.diff.GraphDiff`` from the traced model graph to ``rewritten_graph``'s."""
        from fxvene.api.views import intervenable_diff

        return intervenable_diff(self, plan=plan, group=group, signature=signature, active=active, collect=collect)

    # ---------------------------------------------------------------- generation (fxvene/api/generation.py)
    def generate(
        self,
        base,
        sources=None,
        unit_locations=None,
        source_representations=None,
        intervene_on_prompt=False,
        subspaces=None,
        output_original_output=False,
        intervention_additional_kwargs=None,
        intervene_on=None,
        decode_steps=None,
        **generate_kwargs,
    ):
        """pyvene 0.1.8's ``generate`` on a KV-cached rewritten graph; returns ``(original_or_None, sequences)``,
        or ``((original_or_None, collected), sequences)`` with a CollectIntervention (one tensor per forward).

        Default semantics are pyvene's (reference section 5.3): ``intervene_on_prompt=False`` acts on every
        decode step at the new token (``{"base": 0}``), never on the prompt; ``intervene_on_prompt=True`` with
        locations acts on the prompt only; with ``unit_locations=None`` on every forward.
        fxvene extension: ``intervene_on="prompt" | "decode" | "all"`` ("all" = the prompt at
        ``unit_locations`` and every generated token in one call) and ``decode_steps=[k, ...]`` (only these
        decode forwards; step k reads the k-th generated token). ``generate_kwargs``: max_new_tokens,
        max_length, do_sample, temperature, top_k, top_p, min_p, typical_p, repetition_penalty,
        no_repeat_ngram_size, min_new_tokens, min_length, eos_token_id, pad_token_id, logits_processor,
        stopping_criteria, generation_config, return_dict_in_generate, output_scores, output_logits, max_time,
        use_cache (True only); early_stopping / length_penalty are accepted and, as in HF without beams, change
        nothing. Without max_new_tokens / max_length the length is HF generate's default on each transformers
        line (20 new tokens). ``num_beams > 1`` and ``use_cache=False`` are refused (the cache rows beam search
        reorders carry per-example interventions; without the cache pyvene intervenes on prompt positions).
        See ``fxvene.api.generation``.
        """
        from fxvene.api.generation import generate

        return generate(
            self,
            base,
            sources=sources,
            unit_locations=unit_locations,
            source_representations=source_representations,
            intervene_on_prompt=intervene_on_prompt,
            subspaces=subspaces,
            output_original_output=output_original_output,
            intervention_additional_kwargs=intervention_additional_kwargs,
            intervene_on=intervene_on,
            decode_steps=decode_steps,
            **generate_kwargs,
        )

    # ---------------------------------------------------------------- save / load (fxvene/api/serialization.py)
    def save(self, save_directory, save_to_hf_hub=False, hf_repo_name="my-awesome-model", include_model=False):
        """Write ``config.json`` (pyvene 0.1.8's layout) and safetensors weights. Never pickle.
        See ``fxvene.api.serialization``."""
        from fxvene.api.serialization import save

        return save(
            self, save_directory, save_to_hf_hub=save_to_hf_hub, hf_repo_name=hf_repo_name, include_model=include_model
        )

    @classmethod
    def load(
        cls,
        load_directory,
        model,
        local_directory=None,
        from_huggingface_hub=False,
        include_model=False,
        custom_types=None,
        **kwargs,
    ):
        """Rebuild from a directory saved by fxvene or pyvene 0.1.8 (``.bin`` files are read with
        ``torch.load(weights_only=True)``). ``custom_types``: user intervention classes the config may
        name. See ``fxvene.api.serialization``."""
        from fxvene.api.serialization import load

        return load(
            cls,
            load_directory,
            model,
            local_directory=local_directory,
            from_huggingface_hub=from_huggingface_hub,
            include_model=include_model,
            custom_types=custom_types,
            **kwargs,
        )

    def save_intervention(self, save_directory, include_model=True):
        """Weights only (safetensors), no config. See ``fxvene.api.serialization``."""
        from fxvene.api.serialization import save_intervention

        return save_intervention(self, save_directory, include_model=include_model)

    def load_intervention(self, load_directory, include_model=True):
        """Load weights into the existing interventions in place (maps to the CPU, then to where each
        intervention lives; never a hard-coded device). See ``fxvene.api.serialization``."""
        from fxvene.api.serialization import load_intervention

        return load_intervention(self, load_directory, include_model=include_model)
