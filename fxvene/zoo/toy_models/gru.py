"""pyvene's GRU: stacked GRU cells unrolled over time, with a sequence-classification or an LM head.

Module tree (the component map ``models/gru.py`` refers to it)::

    GRUForClassification / GRULMHeadModel
      gru: GRUModel
        wte, wpe          (only with include_emb)
        cells.{i}: GRUCell (x2h, h2h, reset_act, update_act, new_act)
      score / lm_head

Each cell is called once per time step, so a cell's output at step t is the output of its t-th
call; fxvene's ``unit="t"`` counts those calls from 0, as pyvene does.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput, SequenceClassifierOutput
from transformers.utils import ModelOutput

from fxvene.zoo.toy_models._heads import FieldsConfig, classification_loss


class GRUConfig(FieldsConfig):
    """Fields and defaults of pyvene 0.1.8's ``GRUConfig``."""

    model_type = "gru"

    def __init__(
        self,
        include_emb=False,
        vocab_size=50_257,
        max_position_embeddings=512,
        n_layer=2,
        h_dim=512,
        n_labels=2,
        include_bias=True,
        pdrop=0.3,
        problem_type="single_label_classification",
        initializer_range=0.02,
        **kwargs,
    ):
        self._keep(locals())
        super().__init__(**kwargs)


class GRUCell(nn.Module):
    """One GRU step: gates from ``x2h(x) + h2h(h)`` (reset, update, new, in that order along the
    last dim); the activations are modules so their inputs and outputs are components."""

    def __init__(self, config):
        super().__init__()
        self.h_dim = config.h_dim
        self.include_bias = config.include_bias
        self.x2h = nn.Linear(self.h_dim, 3 * self.h_dim, bias=self.include_bias)
        self.h2h = nn.Linear(self.h_dim, 3 * self.h_dim, bias=self.include_bias)
        self.reset_act = nn.Sigmoid()
        self.update_act = nn.Sigmoid()
        self.new_act = nn.Tanh()
        self.reset_parameters()

    def reset_parameters(self):
        """Every parameter uniform in ``±1/sqrt(h_dim)`` (drawn after nn.Linear's own init, in parameter order)."""
        bound = 1.0 / math.sqrt(self.h_dim)
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-bound, bound)

    def forward(self, current_states, hidden_states=None):
        if hidden_states is None:
            hidden_states = current_states.new_zeros(current_states.size(0), self.h_dim)
        gx_reset, gx_update, gx_new = self.x2h(current_states).chunk(3, 1)
        gh_reset, gh_update, gh_new = self.h2h(hidden_states).chunk(3, 1)
        reset = self.reset_act(gx_reset + gh_reset)
        update = self.update_act(gx_update + gh_update)
        new = self.new_act(gx_new + reset * gh_new)
        return update * hidden_states + (1 - update) * new


@dataclass
class GRUModelOutput(ModelOutput):
    last_hidden_state: torch.FloatTensor = None
    hidden_states: tuple[torch.FloatTensor] | None = None


class GRUPreTrainedModel(PreTrainedModel):
    config_class = GRUConfig

    def _init_weights(self, module):
        """Embeddings ~ N(0, initializer_range) (the padding row zeroed); the cells keep their own init."""
        if not isinstance(module, nn.Embedding):
            return
        with torch.no_grad():
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.padding_idx is not None:
                module.weight[module.padding_idx] = 0.0


class GRUModel(GRUPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.h_dim, self.n_layer, self.include_bias = config.h_dim, config.n_layer, config.include_bias
        if config.include_emb:  # token then position embeddings, built before the cells (the init order)
            self.wte = nn.Embedding(config.vocab_size, config.h_dim)
            self.wpe = nn.Embedding(config.max_position_embeddings, config.h_dim)
        self.cells = nn.ModuleList([GRUCell(config) for _ in range(config.n_layer)])
        self.post_init()

    def get_input_embeddings(self):
        return getattr(self, "wte", None)

    def set_input_embeddings(self, new_embeddings):
        self.wte = new_embeddings

    def forward(
        self,
        input_ids=None,
        position_ids=None,
        inputs_embeds=None,
        hidden_states=None,
        output_hidden_states=None,
        return_dict=None,
    ):
        """``hidden_states``: the initial state (n_layer, batch, h_dim), zeros by default. Returns the
        last layer's state at every step (batch, seq, h_dim) and its state after the last step."""
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("GRUModel: give input_ids or inputs_embeds")
            if not hasattr(self, "wte"):
                raise ValueError("GRUModel: input_ids need token embeddings (GRUConfig(include_emb=True))")
            inputs_embeds = self.wte(input_ids)
        if position_ids is not None:  # out of place: the caller's inputs_embeds stay as they were
            inputs_embeds = inputs_embeds + self.wpe(position_ids)
        batch, steps = inputs_embeds.shape[0], inputs_embeds.shape[1]
        if hidden_states is None:
            hidden_states = torch.zeros(self.n_layer, batch, self.h_dim, device=inputs_embeds.device)
        state = [hidden_states[layer] for layer in range(self.n_layer)]
        top = []
        for t in range(steps):
            below = inputs_embeds[:, t, :]
            for layer, cell in enumerate(self.cells):
                state[layer] = cell(below, state[layer])
                below = state[layer]
            top.append(below)
        last = state[-1]
        every_step = torch.stack(top, dim=1)
        if not return_dict:
            return (every_step, last)
        return GRUModelOutput(hidden_states=every_step, last_hidden_state=last)


class GRUForClassification(GRUPreTrainedModel):
    """Classifies from the last layer's state at each example's last position (the last 1 of
    ``attention_mask``, else the last step)."""

    def __init__(self, config):
        super().__init__(config)
        self.n_labels = config.n_labels
        self.gru = GRUModel(config)
        self.score = nn.Linear(config.h_dim, self.n_labels, bias=False)

    def forward(
        self,
        input_ids=None,
        position_ids=None,
        inputs_embeds=None,
        attention_mask=None,
        labels=None,
        output_hidden_states=None,
        return_dict=None,
    ):
        body = self.gru(input_ids=input_ids, position_ids=position_ids, inputs_embeds=inputs_embeds)
        every_step = body[0]
        batch, steps = every_step.shape[0], every_step.shape[1]
        if attention_mask is None:
            last = torch.full((batch,), steps - 1, dtype=torch.long, device=every_step.device)
        else:
            last = attention_mask.sum(dim=-1).long() - 1
        pooled = every_step[torch.arange(batch, device=every_step.device), last]
        logits = self.score(pooled)
        loss = None if labels is None else classification_loss(self.config, logits, labels, self.n_labels)
        if not return_dict:
            return ((loss,) if loss is not None else ()) + (logits,) + tuple(body[1:])
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=body[0])


class GRULMHeadModel(GRUPreTrainedModel):
    """Next-token logits from the last layer's state at every step."""

    _tied_weights_keys = ["lm_head.weight"]

    def __init__(self, config):
        super().__init__(config)
        self.n_labels = config.n_labels
        self.gru = GRUModel(config)
        self.lm_head = nn.Linear(config.h_dim, config.vocab_size, bias=False)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_hidden_states=None,
        return_dict=None,
    ):
        body = self.gru(input_ids=input_ids, position_ids=position_ids, inputs_embeds=inputs_embeds)
        logits = self.lm_head(body[0])
        loss = None
        if labels is not None:  # next-token loss: position i predicts token i + 1
            shifted = logits[..., :-1, :].contiguous()
            targets = labels.to(logits.device)[..., 1:].contiguous()
            loss = nn.functional.cross_entropy(shifted.view(-1, shifted.size(-1)), targets.view(-1))
        if not return_dict:
            return ((loss,) if loss is not None else ()) + (logits,) + tuple(body[1:])
        return CausalLMOutput(loss=loss, logits=logits, hidden_states=body[0])
