"""pyvene's MLP: a stack of ``Linear -> activation -> dropout`` blocks, optionally fed token and
position embeddings, with a linear classification head (DAS tutorials, hierarchical equality).

Module tree (the component map ``models/mlp.py`` refers to it)::

    MLPForClassification
      mlp: MLPModel
        wte, wpe        (only with include_emb)
        dropout
        h.{i}: MLPBlock (ff1, act, dropout)
      score
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import ModelOutput

from fxvene.zoo.toy_models._heads import FieldsConfig, classification_loss


class MLPConfig(FieldsConfig):
    """Fields and defaults of pyvene 0.1.8's ``MLPConfig``."""

    model_type = "mlp"

    def __init__(
        self,
        include_emb=False,
        vocab_size=50_257,
        max_position_embeddings=512,
        n_layer=2,
        h_dim=512,
        num_classes=2,
        activation_function="gelu",
        pdrop=0.3,
        problem_type="single_label_classification",
        include_bias=True,
        squeeze_output=True,
        **kwargs,
    ):
        self._keep(locals())
        super().__init__(**kwargs)


@dataclass
class MLPModelOutput(ModelOutput):
    last_hidden_state: torch.FloatTensor = None
    hidden_states: tuple[torch.FloatTensor] | None = None


class MLPBlock(nn.Module):
    """``dropout(act(ff1(x)))``; ``act`` is a module, so its output is a component (``mlp_activation``)."""

    def __init__(self, config):
        super().__init__()
        width = config.h_dim
        self.ff1 = nn.Linear(width, width, config.include_bias)  # the only parameters: built first
        self.act, self.dropout = ACT2FN[config.activation_function], nn.Dropout(p=config.pdrop)

    def forward(self, x):
        activated = self.act(self.ff1(x))
        return self.dropout(activated)


def _as_tuple(*values):
    return tuple(v for v in values if v is not None)


class MLPModel(PreTrainedModel):
    config_class = MLPConfig

    def __init__(self, config):
        super().__init__(config)
        self.config = config
        self.h_dim = config.h_dim
        if config.include_emb:  # created before the blocks: the same random draws as pyvene
            self.wte = nn.Embedding(config.vocab_size, self.h_dim)
            self.wpe = nn.Embedding(config.max_position_embeddings, self.h_dim)
        self.dropout = nn.Dropout(config.pdrop)
        self.h = nn.ModuleList(MLPBlock(config) for _ in range(config.n_layer))
        self.post_init()

    def forward(
        self, input_ids=None, position_ids=None, inputs_embeds=None, output_hidden_states=None, return_dict=None
    ):
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("MLPModel: give input_ids or inputs_embeds")
            if not hasattr(self, "wte"):
                raise ValueError("MLPModel: input_ids need token embeddings (MLPConfig(include_emb=True))")
            inputs_embeds = self.wte(input_ids)
        hidden = inputs_embeds
        if position_ids is not None:  # out of place: the caller's inputs_embeds stay as they were
            hidden = hidden + self.wpe(position_ids)
        hidden = self.dropout(hidden)
        states = () if output_hidden_states else None
        for block in self.h:
            if states is not None:
                states = states + (hidden,)
            hidden = block(hidden)
        if states is not None:
            states = states + (hidden,)
        if not return_dict:  # pyvene's default is a tuple
            return _as_tuple(hidden, states)
        return MLPModelOutput(last_hidden_state=hidden, hidden_states=states)


class MLPForClassification(PreTrainedModel):
    config_class = MLPConfig

    def __init__(self, config):
        super().__init__(config)
        self.num_classes = config.num_classes
        self.squeeze_output = config.squeeze_output
        self.mlp = MLPModel(config)
        self.score = nn.Linear(config.h_dim, self.num_classes, bias=config.include_bias)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_hidden_states=None,
        return_dict=None,
    ):
        body = self.mlp(
            input_ids=input_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
        )
        logits = self.score(body[0])
        if self.squeeze_output:
            logits = logits.squeeze(1)
        loss = None if labels is None else classification_loss(self.config, logits, labels, self.num_classes)
        if not return_dict:
            return _as_tuple(loss) + (logits,) + tuple(body[1:])
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=body.hidden_states)
