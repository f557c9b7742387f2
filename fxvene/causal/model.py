"""pyvene's CausalModel: a high-level causal model (variables, values, parents, mechanisms) for DAS.

A causal model is a DAG of named variables. Input variables have no parents; every other variable
is computed by its mechanism ``functions[v](*values of parents[v])``. The model runs forward under
an intervention (a partial setting that fixes some variables), runs interchange interventions
(a variable takes the value it has on a source input), samples inputs and builds the factual and
counterfactual datasets that distributed alignment search trains on.

Same constructor, methods, attributes, return values and *seeded* draws as pyvene 0.1.8: every
sampler makes the same ``random`` calls in the same order, and the mechanisms are called the same
number of times in the same order, so a seeded run gives the same inputs and datasets. Where
pyvene crashes obscurely or never returns (a cycle, a parent that names no variable, an unknown
variable in an intervention, a value a variable cannot take) this raises a ValueError/TypeError;
see "Differences from pyvene 0.1.8" in the docs (docs/differences.md).
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict

import numpy as np
import torch

from fxvene.causal import checks


class CausalModel:
    """A causal model over named variables.

    Args:
        variables: the variable names.
        values: ``{variable: list of the values it can take}`` (inputs are sampled from these).
        parents: ``{variable: list of its parents}``; variables with no parents are the inputs.
        functions: ``{variable: mechanism}``; a mechanism takes its parents' values in the order of
            ``parents[variable]`` (inputs: no arguments, giving their default value).
        timesteps: ``{variable: int}``, a parent before its children; by default the length of the
            longest path from an input, and every output at the last step.
        equiv_classes: precomputed ``{variable: {value: [parent settings giving it]}}``; the rest
            are computed on first use by ``sample_input_tree_balanced``.
        pos: ``{variable: (x, y)}`` for the plots; missing ones are laid out by timestep.

    Attributes as pyvene's: ``variables`` (sorted by name, then stably by timestep), ``inputs``
    and ``outputs`` (sorted by name), ``children``, ``timesteps``, ``end_time`` (also when
    ``timesteps`` is given: the largest one), ``equiv_classes``, ``pos``, ``start_variables``.
    The caller's list and dicts are not modified (pyvene sorts ``variables`` in place and writes
    layout positions into ``pos``).
    """

    def __init__(self, variables, values, parents, functions, timesteps=None, equiv_classes=None, pos=None):
        names = checks.check_names(variables)
        self._names = set(names)
        self.values = checks.check_values(values, self._names)
        self.parents = checks.check_parents(parents, self._names)
        self.functions = checks.check_functions(functions, self._names, self.parents)

        by_name = sorted(names)
        self.children = {v: [] for v in by_name}
        for child in by_name:
            for parent in self.parents[child]:
                self.children[parent].append(child)
        self.start_variables = []  # pyvene keeps this attribute; it is always empty there too
        self.inputs = [v for v in by_name if not self.parents[v]]
        self.outputs = [v for v in by_name if not self.children[v]]

        if timesteps is None:
            self.timesteps, self.end_time = self.generate_timesteps()
            for out in self.outputs:
                self.timesteps[out] = self.end_time
        else:
            self.timesteps = checks.check_timesteps(timesteps, self._names, self.parents)
            self.end_time = max(self.timesteps.values(), default=0)
        self.variables = sorted(by_name, key=lambda v: self.timesteps[v])  # stable: by name within a step

        self.run_forward()  # as pyvene: the mechanisms run once on the defaults (a broken one fails here)

        self.pos = {} if pos is None else checks.check_per_variable("pos", pos, self._names, required=False)
        width = defaultdict(int)
        for v in self.variables:
            if v not in self.pos:
                step = self.timesteps[v]
                self.pos[v] = (width[step], step)
                width[step] += 1

        self.equiv_classes = (
            {}
            if equiv_classes is None
            else checks.check_per_variable("equiv_classes", equiv_classes, self._names, required=False)
        )

    # ------------------------------------------------------------------------------ structure

    def generate_timesteps(self):
        """``(timesteps, end_time)``: each variable's longest distance from an input, layer by layer
        from the inputs (the dict's order is the order in which variables are first reached)."""
        steps = {v: 0 for v in self.inputs}
        step = 1
        changed = True
        while changed:
            changed = False
            nxt = dict(steps)
            for var, t in steps.items():
                if t == step - 1:
                    for child in self.children[var]:
                        nxt[child] = step
                        changed = True
            steps = nxt
            step += 1
        return steps, step - 2

    def generate_equiv_classes(self):
        """For every non-input variable not in ``equiv_classes`` yet: ``{value: [parent settings]}``,
        all combinations of the parents' values, grouped by the value the mechanism gives."""
        for var in self.variables:
            if var in self.inputs or var in self.equiv_classes:
                continue
            try:
                classes = {val: [] for val in self.values[var]}
            except TypeError:
                raise TypeError(
                    f"values[{var!r}]: the values of a non-input variable must be hashable "
                    f"(they key its equivalence classes)"
                ) from None
            ps = self.parents[var]
            for combo in itertools.product(*(self.values[p] for p in ps)):
                out = self._call(var, combo)
                if out not in classes:
                    raise ValueError(
                        f"functions[{var!r}] gives {out!r} for parents {dict(zip(ps, combo))}, "
                        f"which is not in values[{var!r}] = {list(self.values[var])!r}"
                    )
                classes[out].append(dict(zip(ps, combo)))
            self.equiv_classes[var] = classes

    def marginalize(self, target):
        raise NotImplementedError(
            "CausalModel.marginalize: pyvene 0.1.8 declares it but does nothing; not implemented here"
        )

    def add_variable(self, variable, values, parents, children, function, timestep=None):
        """Register a variable's values, parents, children, mechanism (and timestep) as pyvene does.
        Like pyvene 0.1.8 this does not add it to ``variables``, ``inputs``/``outputs`` nor to the
        parents' ``children``: ``run_forward`` does not compute it."""
        for arg, names in (("parents", parents), ("children", children)):
            for n in names:
                checks.check_variable(f"add_variable({arg})", n, self._names)
        if timestep is not None:
            self.timesteps[variable] = timestep
        self.parents[variable] = parents
        self.children[variable] = children
        self.values[variable] = values
        self.functions[variable] = function

    # ------------------------------------------------------------------------------ running

    def _call(self, var, args):
        try:
            return self.functions[var](*args)
        except Exception as err:
            if hasattr(err, "add_note"):
                err.add_note(f"(in the mechanism functions[{var!r}] of the causal model)")
            raise

    def run_forward(self, intervention=None):
        """The total setting (every variable's value, in ``variables`` order, as a
        ``defaultdict(None)`` like pyvene's) with the variables in ``intervention`` fixed."""
        fixed = checks.check_setting("intervention", intervention, self._names)
        setting = defaultdict(None)
        for var in self.variables:
            if var in fixed:
                setting[var] = fixed[var]
            else:
                setting[var] = self._call(var, [setting[p] for p in self.parents[var]])
        return setting

    def run_interchange(self, input, source_interventions):
        """Run ``input`` with each variable ``v`` of ``source_interventions`` set to its value on the
        source input ``source_interventions[v]``."""
        base = dict(checks.check_setting("input", input, self._names))
        sources = checks.check_setting("source_interventions", source_interventions, self._names)
        for var, source in sources.items():
            base[var] = self.run_forward(source)[var]
        return self.run_forward(base)

    def find_live_paths(self, intervention):
        """``{length: [paths]}`` (length >= 2) of the directed paths along which each step is an
        actual cause under ``intervention``: changing the variable to one of its other values changes
        its child. The last key holds an empty list."""
        actual = self.run_forward(intervention)
        paths = {1: [[v] for v in self.variables]}
        length = 2
        while True:
            paths[length] = []
            for path in paths[length - 1]:
                last = path[-1]
                for child in self.children[last]:
                    live = False
                    for value in self.values[last]:  # every value is tried (no early exit), as pyvene
                        changed = dict(intervention or {})
                        changed[last] = value
                        if self.run_forward(changed)[child] != actual[child]:
                            live = True
                    if live:
                        paths[length].append(path + [child])
            if not paths[length]:
                break
            length += 1
        del paths[1]
        return paths

    # ------------------------------------------------------------------------------ sampling

    def sample_intervention(self, mandatory=None):
        """A non-empty random intervention on the intermediate variables: each is included with
        probability 1/2 and set to a uniformly drawn value (``mandatory`` is unused, as in pyvene)."""
        hidden = [v for v in self.variables if v not in self.inputs and v not in self.outputs]
        if not hidden:
            raise ValueError(
                "sample_intervention: this causal model has no intermediate variable to intervene "
                "on (every variable is an input or an output)"
            )
        intervention = {}
        while not intervention:
            for var in hidden:
                if random.choice([0, 1]) == 0:
                    intervention[var] = random.choice(self.values[var])
        return intervention

    def sample_input(self, mandatory=None, output_var=None, output_var_value=None):
        """A uniformly random input setting, redrawn until ``mandatory(total_setting)`` holds.

        ``output_var``/``output_var_value`` (not in pyvene 0.1.8, whose default counterfactual
        sampler passes them and fails) also require ``total_setting[output_var] == output_var_value``.
        """
        accept = mandatory
        if output_var is not None:
            checks.check_variable("sample_input(output_var)", output_var, self._names)

            def accept(total):
                return total[output_var] == output_var_value and (mandatory is None or mandatory(total))

        tries = 0
        while True:
            # random.sample(values, 1) as pyvene (not random.choice: the draws differ)
            input = {v: random.sample(_as_sequence(self.values[v]), 1)[0] for v in self.inputs}
            total = self.run_forward(input)
            if accept is None or accept(total):
                return input
            tries += 1
            if output_var is not None and tries >= 100_000:
                raise ValueError(
                    f"sample_input: no input with {output_var} == {output_var_value!r} "
                    f"in 100000 draws; is that value reachable?"
                )

    def sample_input_tree_balanced(self, output_var=None, output_var_value=None):
        """An input whose ``output_var`` is ``output_var_value`` (default: a uniformly drawn value),
        drawn top-down: at each variable a uniformly drawn parent setting among those that give it
        the wanted value, then any input left unset uniformly."""
        if output_var is None:
            if len(self.outputs) != 1:
                raise ValueError(
                    f"sample_input_tree_balanced: this model has {len(self.outputs)} outputs "
                    f"{self.outputs}; pass output_var"
                )
            output_var = self.outputs[0]
        checks.check_variable("sample_input_tree_balanced(output_var)", output_var, self._names)
        if output_var in self.inputs:
            raise ValueError(
                f"sample_input_tree_balanced: output_var {output_var!r} is an input variable; "
                f"it needs parents to balance over"
            )
        self.generate_equiv_classes()
        if output_var_value is None:
            output_var_value = random.choice(self.values[output_var])

        setting = {}
        self._fill_parents(output_var, output_var_value, setting)
        for var in self.inputs:
            if var not in setting:
                setting[var] = random.choice(self.values[var])
        return setting

    def _fill_parents(self, var, value, setting):
        classes = self.equiv_classes[var]
        if value not in classes:
            raise ValueError(
                f"sample_input_tree_balanced: {value!r} is not a value of {var!r} "
                f"(values[{var!r}] = {list(self.values[var])!r})"
            )
        if not classes[value]:
            raise ValueError(
                f"sample_input_tree_balanced: no setting of the parents of {var!r} gives it the value {value!r}"
            )
        chosen = random.choice(classes[value])
        for parent, parent_value in chosen.items():
            if parent in self.inputs:
                setting[parent] = parent_value
            else:
                self._fill_parents(parent, parent_value, setting)

    # ------------------------------------------------------------------------------ filters

    def get_path_maxlen_filter(self, lengths):
        """A filter on total settings: the longest live path (``find_live_paths`` on the setting's
        inputs) has a length in ``lengths``."""

        def check_path(total_setting):
            paths = self.find_live_paths({v: total_setting[v] for v in self.inputs})
            longest = [n for n, ps in paths.items() if ps]
            if not longest:
                raise ValueError("get_path_maxlen_filter: this setting has no live path at all")
            return max(longest) in lengths

        return check_path

    def get_partial_filter(self, partial_setting):
        """A filter on total settings: they agree with ``partial_setting``."""
        checks.check_setting("partial_setting", partial_setting, self._names)

        def compare(total_setting):
            return not any(total_setting[v] != partial_setting[v] for v in partial_setting)

        return compare

    def get_specific_path_filter(self, start, end):
        """A filter on total settings: some live path runs from ``start`` to ``end``."""
        checks.check_variable("get_specific_path_filter(start)", start, self._names)
        checks.check_variable("get_specific_path_filter(end)", end, self._names)

        def check_path(total_setting):
            paths = self.find_live_paths({v: total_setting[v] for v in self.inputs})
            return any(p[0] == start and p[-1] == end for ps in paths.values() for p in ps)

        return check_path

    # ------------------------------------------------------------------------------ encoders

    def input_to_tensor(self, setting):
        """The inputs' values (sorted by name), each as a float vector, concatenated."""
        vals = [setting[v] for v in self.inputs]
        if all(_is_float_vector(x) for x in vals):  # fast path (datasets call this per example): the same floats
            return torch.from_numpy(np.concatenate([np.asarray(x, dtype=np.float64).reshape(-1) for x in vals])).float()
        return torch.cat([_as_vector(x) for x in vals])

    def output_to_tensor(self, setting):
        """The outputs' values (sorted by name) as floats, one per output."""
        return torch.tensor([float(setting[v]) for v in self.outputs])

    # ------------------------------------------------------------------------------ datasets

    def generate_factual_dataset(
        self,
        size,
        sampler=None,
        filter=None,
        device="cpu",
        input_function=None,
        output_function=None,
        return_tensors=True,
    ):
        """``size`` examples ``{"input_ids": input, "labels": total setting}`` (encoded as tensors on
        ``device`` unless ``return_tensors=False``) from ``sampler()`` inputs that pass ``filter``."""
        from fxvene.causal.datasets import factual_dataset

        return factual_dataset(self, size, sampler, filter, device, input_function, output_function, return_tensors)

    def generate_counterfactual_dataset(
        self,
        size,
        intervention_id,
        batch_size,
        sampler=None,
        intervention_sampler=None,
        filter=None,
        device="cpu",
        input_function=None,
        output_function=None,
        return_tensors=True,
    ):
        """Interchange-intervention examples, ``batch_size`` per sampled intervention, until at least
        ``size``: ``labels`` (the counterfactual output), ``base_labels``, ``input_ids`` (the base),
        ``source_input_ids`` (one source per intervened variable, in ``variables`` order, padded with
        zeros / ``{}`` to the number of intermediate variables) and ``intervention_id``."""
        from fxvene.causal.datasets import counterfactual_dataset

        return counterfactual_dataset(
            self,
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
        )

    # ------------------------------------------------------------------------------ plots

    def print_structure(self, pos=None, font=12, node_size=1000):
        """Draw the graph (matplotlib, imported on first use) at ``pos`` (default: ``self.pos``)."""
        from fxvene.causal.plot import draw

        draw(self, {v: v for v in self.variables}, self.pos if pos is None else pos, font, node_size)

    def print_setting(self, total_setting, font=12, node_size=1000):
        """Draw the graph with each node labelled ``"variable: value"``."""
        from fxvene.causal.plot import draw

        checks.check_setting("total_setting", total_setting, self._names)
        missing = [v for v in self.variables if v not in total_setting]
        if missing:
            raise ValueError(f"print_setting: total_setting has no value for {missing}; pass run_forward's result")
        draw(self, {v: f"{v}: {total_setting[v]}" for v in self.variables}, self.pos, font, node_size)


def _as_vector(value):
    """A value as a float tensor with at least one dimension (a scalar becomes a 1-vector)."""
    t = torch.as_tensor(value).float()
    return t.reshape(1) if t.dim() == 0 else t


def _is_float_vector(x):
    """A float ndarray of at most one dimension, or a Python float/bool: converting it through float64
    rounds to float32 exactly as torch does directly."""
    if isinstance(x, np.ndarray):
        return x.ndim <= 1 and x.dtype.kind == "f"
    return isinstance(x, (float, bool))


def _as_sequence(values):
    """random.sample needs a sequence; a numpy array of values is sampled as its list (same draws)."""
    return values if isinstance(values, (list, tuple, range)) else list(values)
