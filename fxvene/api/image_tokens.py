"""Units over the image a vision-language model splices into its text: ``image_token_positions``.

May import: models, passes, interventions, graph, inspection (the api layer).
"""

from __future__ import annotations

import torch

from fxvene.graph.model_io import image_tokens


def image_token_positions(model, inputs):
    """Per batch row, the positions of the image tokens ``model`` (LLaVA) replaces with image patch
    features: a list of lists, in the order of the patches (row by row over the patch grid), ready for
    ``unit_locations`` (``{"sources->base": ([rows], [rows])}``) or as ``subject_positions``.

    ``inputs``: a dict holding ``input_ids`` (batch, seq), or that tensor itself.
    """
    spec = image_tokens(model)
    if spec is None:
        raise ValueError(
            f"model: {type(model).__name__} splices no image tokens into its text; "
            "image_token_positions takes a LLaVA model (LlavaForConditionalGeneration)"
        )
    ids = inputs.get("input_ids") if isinstance(inputs, dict) else inputs
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"inputs: expected a dict with 'input_ids' or an id tensor, got {type(inputs).__name__}")
    if ids.dim() != 2 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"inputs['input_ids'] must be an integer (batch, seq) tensor, got {tuple(ids.shape)}")
    token, _ = spec
    return [torch.nonzero(row == token).flatten().tolist() for row in ids]
