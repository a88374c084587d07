"""Shared fixtures: tiny random Llama / Qwen2 / BERT models with a word-level tokenizer (no weights)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import (
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from matryoshka.model.matryoshka_model import MatryoshkaModel

WORDS = (  # noqa: SIM905 - a word list reads best as prose
    "[PAD] [UNK] [CLS] [SEP] Yes No A B : . ? Passage Question Please write a question based on this passage "
    "Predict whether contains an answer to query Answer or the cat sat mat dog ran park sun is hot star "
    "what where who how why when which paris france capital city river water blue sky green tree"
).split()
VOCAB = {w: i for i, w in enumerate(WORDS)}


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over a fixed test vocabulary."""
    tok = Tokenizer(WordLevel(VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )


def tiny_llama(layers: int = 4, seed: int = 0) -> LlamaForCausalLM:
    """A random 4-layer Llama with grouped-query attention."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(WORDS),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


def tiny_qwen2(layers: int = 3, seed: int = 0) -> Qwen2ForCausalLM:
    """A random Qwen2 (q/k/v biases) to show the decoder code serves that family too."""
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(WORDS),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    return Qwen2ForCausalLM(config).eval()


def tiny_bert(layers: int = 3, seed: int = 0) -> BertModel:
    """A random BERT encoder."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(WORDS),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=512,
    )
    return BertModel(config, add_pooling_layer=False).eval()


@pytest.fixture
def llama_model(tiny_tokenizer: PreTrainedTokenizerFast) -> MatryoshkaModel:
    """A Matryoshka model over a tiny Llama with heads on every layer."""
    return MatryoshkaModel.from_hf("tiny-llama", tiny_llama(), tiny_tokenizer)


@pytest.fixture
def bert_model(tiny_tokenizer: PreTrainedTokenizerFast) -> MatryoshkaModel:
    """A Matryoshka model over a tiny BERT with heads on every layer."""
    return MatryoshkaModel.from_hf("tiny-bert", tiny_bert(), tiny_tokenizer)


PASSAGES = [
    "the cat sat on the mat",
    "paris is the capital city of france",
    "the sun is a hot star",
    "the dog ran to the park where the green tree is",
    "blue sky",
]
