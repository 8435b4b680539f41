"""Tokenizers for the audio-interaction models: a compact byte-level BPE trained with `tokenizers`,
with the control tokens added as special tokens (never produced by ordinary text)."""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .config import CONTROL_TOKENS

PAD = "<|pad|>"

# A small built-in corpus so that test models get a real (if tiny) vocabulary.
TINY_CORPUS = [
    "Answer when someone talks to you.",
    "Transcribe what you hear.",
    "Tell me if the smoke alarm or the doorbell goes off.",
    "Turning on the kitchen lights.",
    "The doorbell is ringing.",
    "Sorry, I can't do that yet.",
    "Setting a timer for five minutes.",
    "It is half past three.",
    "I hear the smoke alarm.",
    "Someone is knocking at the door.",
    "The phone is ringing.",
]


def train_bpe(texts: Iterable[str], vocab_size: int, split_digits: bool = False) -> Tokenizer:
    """Byte-level BPE with the control tokens and a pad token as added special tokens
    (``split_digits``: every digit its own token, see ``set_split_digits``)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if split_digits:
        set_split_digits(tok)
    tok.decoder = decoders.ByteLevel()
    specials = [PAD, *CONTROL_TOKENS.values()]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    return tok


def set_split_digits(tok: Tokenizer) -> Tokenizer:
    """Encode every digit as its own token, and the space before a number as a lone "Ġ"
    (" 73" -> "Ġ", "7", "3"), so that a number the model never said is made of the same tokens as
    those it did ("seventy three" -> 7, 3) instead of one token per number the BPE happened to see.
    Only encoding changes: every token is in the byte-level alphabet, and decoding is the same."""
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    return tok


def control_token_ids(tok: Tokenizer) -> dict[str, int]:
    ids = {}
    for key, text in CONTROL_TOKENS.items():
        i = tok.token_to_id(text)
        if i is None:
            raise ValueError(f"tokenizer lacks control token {text!r}")
        ids[key] = i
    return ids


def add_control_tokens(tok: Tokenizer) -> dict[str, int]:
    """Add the control tokens to an existing tokenizer (e.g. SmolLM2's) as special tokens."""
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in CONTROL_TOKENS.values()])
    return control_token_ids(tok)
