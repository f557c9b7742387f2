"""Tiny random-weight configs for every decoder family the tests cover: one place for sizes.

``make_tiny("gemma2")`` builds a ``...ForCausalLM`` (``head="seq_cls"`` a sequence classifier,
``head="base"`` the bare model) with 2 layers, hidden 32, 4 heads (2 key/value heads where the
family has GQA), vocab 64, dropout off, seeded. ``AVAILABLE`` lists the families this transformers
line has (Gemma 3 and Qwen3 are 5.x only).
Not every head exists for every family on every line (e.g. OLMo and Granite have no sequence
classifier): ``make_tiny`` raises ValueError for those, as transformers does.
"""

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

COMMON = dict(vocab_size=64, bos_token_id=0, eos_token_id=1, pad_token_id=2)
LLAMA_LIKE = dict(
    num_hidden_layers=2,
    hidden_size=32,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=48,
    max_position_embeddings=64,
)
TINY = {
    "gpt2": dict(n_layer=2, n_embd=32, n_head=4, n_positions=64, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0),
    "llama": LLAMA_LIKE,
    "mistral": dict(LLAMA_LIKE, sliding_window=4),
    "qwen2": LLAMA_LIKE,
    "qwen3": dict(LLAMA_LIKE, head_dim=8),
    "gemma": dict(LLAMA_LIKE, head_dim=8, hidden_activation="gelu_pytorch_tanh"),
    "gemma2": dict(LLAMA_LIKE, head_dim=8, sliding_window=4, query_pre_attn_scalar=8),
    "gemma3_text": dict(LLAMA_LIKE, head_dim=8, sliding_window=4, query_pre_attn_scalar=8),
    "olmo": LLAMA_LIKE,
    "olmo2": LLAMA_LIKE,
    "granite": LLAMA_LIKE,
    "phi3": dict(LLAMA_LIKE, pad_token_id=2),
    "mixtral": dict(LLAMA_LIKE, num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(
        LLAMA_LIKE,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=24,
        shared_expert_intermediate_size=48,
    ),
    "gpt_neo": dict(
        num_layers=2,
        hidden_size=32,
        num_heads=4,
        attention_types=[[["global", "local"], 1]],
        window_size=4,
        max_position_embeddings=64,
        embed_dropout=0.0,
        attention_dropout=0.0,
        resid_dropout=0.0,
    ),
    "gpt_neox": dict(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        rotary_pct=0.25,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    ),
    "gptj": dict(
        n_layer=2, n_embd=32, n_head=4, rotary_dim=4, n_positions=64, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0
    ),
    "falcon": dict(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        max_position_embeddings=64,
        attention_dropout=0.0,
        hidden_dropout=0.0,
    ),
}


def _available():
    out = []
    for model_type in TINY:
        try:
            AutoConfig.for_model(model_type)
        except (KeyError, ValueError):
            continue
        out.append(model_type)
    return out


AVAILABLE = _available()

_HEADS = {"causal_lm": AutoModelForCausalLM, "seq_cls": AutoModelForSequenceClassification, "base": AutoModel}


def tiny_config(model_type, attn="eager", **overrides):
    cfg = AutoConfig.for_model(model_type, **{**COMMON, **TINY[model_type], **overrides})
    cfg._attn_implementation = attn
    return cfg


def make_tiny(model_type, head="causal_lm", seed=0, attn="eager", **overrides):
    """A seeded tiny model of ``model_type`` with random weights, in eval mode."""
    torch.manual_seed(seed)
    cfg = tiny_config(model_type, attn=attn, **overrides)
    return _HEADS[head].from_config(cfg, attn_implementation=attn).eval()


# encoder-decoders (tests/test_families_encdec.py): 2 + 2 layers, d_model 16, 4 heads, vocab 64, dropout off;
# Whisper: 8 mel bins, 16 input frames (8 encoder positions after its stride-2 convolution)
_ENCDEC_COMMON = dict(
    vocab_size=64,
    d_model=16,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=32,
    decoder_ffn_dim=32,
    dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    bos_token_id=0,
    pad_token_id=1,
    eos_token_id=2,
    decoder_start_token_id=2,
)
ENCDEC = {
    "bart": dict(_ENCDEC_COMMON, max_position_embeddings=64, forced_eos_token_id=None),
    "whisper": dict(
        _ENCDEC_COMMON,
        num_mel_bins=8,
        max_source_positions=8,
        max_target_positions=32,
        suppress_tokens=None,
        begin_suppress_tokens=None,
    ),
}


def make_encdec(model_type, head="seq2seq", seed=0, attn="eager"):
    """A seeded tiny BART or Whisper (``head="seq2seq"``: ...ForConditionalGeneration; ``"base"``: the bare
    model) with random weights, in eval mode."""
    from transformers import AutoModelForSeq2SeqLM, AutoModelForSpeechSeq2Seq

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(model_type, **ENCDEC[model_type])
    cfg._attn_implementation = attn
    if head == "base":
        cls = AutoModel
    else:
        cls = AutoModelForSpeechSeq2Seq if model_type == "whisper" else AutoModelForSeq2SeqLM
    return cls.from_config(cfg, attn_implementation=attn).eval()


# ------------------------------------------------------------------------ encoders (BERT, RoBERTa, ESM)

ENCODER = dict(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    pad_token_id=1,
)
TINY_ENCODERS = {
    "bert": ENCODER,
    "roberta": ENCODER,
    # ESM-2's layout: rotary positions, no token dropout; token 3 is the mask
    "esm": dict(ENCODER, mask_token_id=3, position_embedding_type="rotary", token_dropout=False),
}
_ENCODER_HEADS = {
    "masked_lm": "AutoModelForMaskedLM",
    "seq_cls": "AutoModelForSequenceClassification",
    "base": "AutoModel",
}


def make_encoder(model_type, head="masked_lm", seed=0, attn="eager"):
    """A seeded tiny BERT / RoBERTa / ESM (``TINY_ENCODERS``): masked LM, sequence classifier or base model."""
    import transformers

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(model_type, **TINY_ENCODERS[model_type])
    cfg._attn_implementation = attn
    return getattr(transformers, _ENCODER_HEADS[head]).from_config(cfg, attn_implementation=attn).eval()


# ------------------------------------------------------------------------ vision-language (LLaVA)

IMAGE_TOKEN = 63  # LLaVA's image placeholder: the last id of the tiny vocab
LLAVA_VISION = dict(
    hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=8, patch_size=2
)


def make_llava(seed=0, attn="eager"):
    """A seeded tiny LLaVA: a 2-layer CLIP vision tower (8-pixel images, 2-pixel patches: 16 image tokens, CLS
    dropped) whose last layer feeds the projector, and the Llama-layout text model of ``LLAMA_LIKE``."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    text = AutoConfig.for_model("llama", **{**COMMON, **LLAMA_LIKE})
    vision = AutoConfig.for_model("clip_vision_model", **LLAVA_VISION)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN, vision_feature_layer=-1)
    cfg.image_seq_length = 16
    cfg._attn_implementation = attn
    return LlavaForConditionalGeneration(cfg).eval()


# ------------------------------------------------------------------------ BLIP (question answering, ITM)

BLIP_TEXT = dict(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=2,
    sep_token_id=3,
)
# the answer decoder cross-attends to the text encoder through key/value layers sized for the vision width:
# BLIP needs the two widths equal (768 in the released checkpoints)
# (BLIP's vision config initialises its weights with std 1e-10: random weights need the usual 0.02)
BLIP_VISION = dict(
    hidden_size=32,
    intermediate_size=40,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=8,
    patch_size=2,
    initializer_range=0.02,
)


def make_blip(head="qa", seed=0, attn="eager"):
    """A seeded tiny BLIP: ``head="qa"`` BlipForQuestionAnswering, ``"itm"`` BlipForImageTextRetrieval; 2 text
    layers (hidden 32, 4 heads), a 2-layer vision tower over 8-pixel images in 2-pixel patches (CLS + 16
    patches), vocab 64. ``image_text_hidden_size`` and ``projection_dim`` equal the text widths, so pyvene
    0.1.8's dimension table (which reads them) gives the tensors' widths."""
    from transformers import BlipConfig, BlipForImageTextRetrieval, BlipForQuestionAnswering

    torch.manual_seed(seed)
    cfg = BlipConfig(
        text_config=BLIP_TEXT,
        vision_config=BLIP_VISION,
        projection_dim=BLIP_TEXT["intermediate_size"],
        image_text_hidden_size=BLIP_TEXT["hidden_size"],
    )
    cfg._attn_implementation = attn
    cls = BlipForQuestionAnswering if head == "qa" else BlipForImageTextRetrieval
    return cls(cfg).eval()


# ------------------------------------------------------------------------ Gemma 3 image-text (transformers 5)

GEMMA3_IMAGE_TOKEN = 63  # the placeholder: the last id of the tiny vocab (62, 61: begin / end of image)
GEMMA3_VISION = dict(
    hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=16, patch_size=4
)


def make_gemma3_vl(seed=0, attn="eager"):
    """A seeded tiny Gemma3ForConditionalGeneration: a 2-layer SigLIP tower over 16-pixel images in 4-pixel
    patches (16 patches, pooled to 4 image tokens) and the Gemma 3 text model of ``TINY["gemma3_text"]``."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    torch.manual_seed(seed)
    text = AutoConfig.for_model("gemma3_text", **{**COMMON, **TINY["gemma3_text"]})
    vision = AutoConfig.for_model("siglip_vision_model", **GEMMA3_VISION)
    cfg = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=4,
        image_token_index=GEMMA3_IMAGE_TOKEN,
        boi_token_index=62,
        eoi_token_index=61,
    )
    cfg._attn_implementation = attn
    model = Gemma3ForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # HF starts the image projection at zero: every image would give the same tokens
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 0.2)
    return model
