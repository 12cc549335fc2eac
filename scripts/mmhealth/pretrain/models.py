"""The self-supervised models: BERT with its masked-language-modelling head for token modalities, ViT with
SimMIM's masked-image-modelling head for images.

Their encoders are built by `train.models.new_encoder`'s config, so `AutoModel` loads the saved folder as the
very encoder class a task fine-tunes (BertModel, ViTModel). Images use `ViTForMaskedImageModeling` (SimMIM:
masked patches regressed from a light linear decoder) rather than ViTMAE, whose `ViTMAEModel` is not the
`ViTModel` the task encoder is.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from mmhealth.core.config import from_config
from mmhealth.core.special_tokens import MASK_ID
from mmhealth.train.models import EncoderInit, new_encoder

TOKENIZER_FILE = "tokenizer.json"


def token_vocab(tokenizer_dir: Path) -> tuple[int, list[int], int]:
    """(vocab size, special token ids, [MASK] id) of a tokenizer folder."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(tokenizer_dir) / TOKENIZER_FILE))
    added = json.loads((Path(tokenizer_dir) / TOKENIZER_FILE).read_text()).get("added_tokens", [])
    specials = sorted({int(t["id"]) for t in added if t.get("special")} | {0})
    mask = tokenizer.token_to_id("[MASK]")
    return tokenizer.get_vocab_size(), specials, MASK_ID if mask is None else int(mask)


def build_masked_lm(init: dict, dropout: float, vocab_size: int, max_length: int, init_from: str | None
                    ) -> nn.Module:
    """BertForMaskedLM: fresh from the task encoders' config, or continued from a local folder."""
    from transformers import AutoModelForMaskedLM, BertForMaskedLM

    if init_from:
        model = AutoModelForMaskedLM.from_pretrained(init_from, local_files_only=True,
                                                     hidden_dropout_prob=dropout)
        if vocab_size > model.config.vocab_size:
            raise ValueError(f"tokens use {vocab_size} ids but pretrain init_from {init_from} knows "
                             f"{model.config.vocab_size}: tokenise with its tokenizer")
        return model
    encoder = new_encoder("text", from_config(EncoderInit, init), dropout, vocab_size=vocab_size,
                          max_length=max_length)
    return BertForMaskedLM(encoder.config)


def build_masked_image_model(init: dict, dropout: float, image_shape: tuple[int, int, int],
                             init_from: str | None) -> nn.Module:
    """ViTForMaskedImageModeling (SimMIM) over a ViTModel of the task encoders' config (or a local folder)."""
    from transformers import ViTForMaskedImageModeling

    if init_from:
        return ViTForMaskedImageModeling.from_pretrained(init_from, local_files_only=True,
                                                         hidden_dropout_prob=dropout)
    encoder = new_encoder("image", from_config(EncoderInit, init), dropout, image_shape=image_shape)
    config = encoder.config
    config.encoder_stride = config.patch_size  # the decoder's pixel shuffle rebuilds one patch per position
    return ViTForMaskedImageModeling(config)


def patch_count(model: nn.Module) -> int:
    config = model.config
    return (config.image_size // config.patch_size) ** 2
