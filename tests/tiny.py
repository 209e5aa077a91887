"""Tiny random models and tokenizers built in-process, so unit tests need no download."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from itda_core.corpus import Corpus, Document
from itda_core.models import LoadedModel, wrap_model

TEXTS = [
    "The capital of France is Paris. Paris is a city on the Seine.",
    "Matching pursuit picks the atom with the largest correlation, then subtracts it.",
    "A dictionary of real activations remembers where each atom came from.",
    "Short one.",
    "Tokens like <script> & </div> and emoji 🙂 must survive a round trip\twith tabs.",
    "Layers of a transformer write into a shared residual stream; later layers read from it.",
    "The quick brown fox jumps over the lazy dog, again and again and again and again.",
    "Numbers 1234 and 5678 and dates like 2025-07-13 appear in text too.",
]


def _byte_level_tokenizer(bos: bool) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<bos>", "<eos>", "<pad>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TEXTS * 4, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def _wordpiece_vocab(tok: Tokenizer, special: list[str]) -> dict[str, int]:
    """A fixed WordPiece vocabulary for TEXTS: specials, every character (alone and as ``##`` piece), words
    of up to 6 characters whole, longer ones as a 4-character head and a ``##`` tail. Built by hand because
    the tokenizers library's WordPiece trainer breaks frequency ties differently in every process, which
    made the tiny BERT (and every dictionary trained on it) change from run to run."""
    words = sorted({w for text in TEXTS
                    for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text))})
    chars = sorted({c for w in words for c in w})
    pieces = [*chars, *(f"##{c}" for c in chars)]
    for w in words:
        pieces += [w] if len(w) <= 6 else [w[:4], f"##{w[4:]}"]
    vocab = list(dict.fromkeys([*special, *pieces]))
    return {piece: i for i, piece in enumerate(vocab)}


def _wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.model = models.WordPiece(_wordpiece_vocab(tok, special), unk_token="[UNK]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def tiny_model(kind: str, seed: int = 0, n_layers: int = 3) -> LoadedModel:
    """A random GPT-2, Llama or BERT with a matching tiny fast tokenizer."""
    torch.manual_seed(seed)
    if kind == "gpt2":
        tok = _byte_level_tokenizer(bos=False)
        cfg = GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=32, n_layer=n_layers, n_head=4)
        model = GPT2LMHeadModel(cfg)
    elif kind == "llama":
        tok = _byte_level_tokenizer(bos=True)
        cfg = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
        )
        model = LlamaForCausalLM(cfg)
    elif kind == "bert":
        tok = _wordpiece_tokenizer()
        cfg = BertConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=256,
        )
        model = BertModel(cfg)
    else:
        raise ValueError(kind)
    return wrap_model(
        model.float().eval(),
        tok,
        name=f"tiny-{kind}",
        model_id=f"tiny-{kind}@seed{seed}",
        source="memory",
        device=torch.device("cpu"),
        dtype=torch.float32,
    )


def tiny_corpus(n_copies: int = 1) -> Corpus:
    """The test texts as a corpus (optionally repeated with a suffix to make more documents)."""
    texts = [t if c == 0 else f"{t} ({c})" for c in range(n_copies) for t in TEXTS]
    docs = [Document(doc_id=i, text=t, source=f"tiny:{i}") for i, t in enumerate(texts)]
    import hashlib

    digest = hashlib.sha256("\n".join(f"{d.doc_id}\t{d.text}" for d in docs).encode()).hexdigest()
    return Corpus(name="tiny", documents=docs, corpus_id="tiny-v1", sha256=digest)


def save_tiny_model(kind: str, folder: Path, n_layers: int = 3) -> Path:
    """:func:`tiny_model` saved as a transformers folder (weights and tokenizer), so it loads by path as a real
    model does; returns the folder."""
    made = tiny_model(kind, n_layers=n_layers)
    made.model.save_pretrained(folder)
    made.tokenizer.save_pretrained(folder)
    return folder
