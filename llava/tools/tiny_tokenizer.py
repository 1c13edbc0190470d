"""Build tiny, deterministic tokenizers offline, laid out like released checkpoints.

Each builder trains in well under a second on an embedded English corpus and writes a folder that
:func:`llava._tokenization.load_tokenizer` (and ``AutoTokenizer.from_pretrained``) loads, with ``len(tokenizer)``
equal to ``vocab_size``:

* :func:`build_sentencepiece_llama_tokenizer`: what a LLaVA-1.5 / Vicuna-v1.5 / llava-v1.6-vicuna checkpoint ships:
  a sentencepiece ``tokenizer.model`` (BPE, byte fallback, ``<unk>``=0, ``<s>``=1, ``</s>``=2, Llama's normaliser
  settings) plus ``tokenizer_config.json`` (``"tokenizer_class": "LlamaTokenizer"``, ``legacy: false``) and
  ``special_tokens_map.json``.
* :func:`build_mistral_tokenizer`: llava-v1.6-mistral-7b's (Mistral-7B-Instruct-v0.2's tokenizer): the same kind of
  sentencepiece model, ids and ``add_bos_token: true``, but ``legacy: true``.
* :func:`build_yi_tokenizer`: llava-v1.6-34b's (Nous-Hermes-2-Yi-34B's): ``<unk>``=0, ``<|startoftext|>``=1,
  ``<|endoftext|>``=2, the ChatML tokens ``<|im_start|>``=6 and ``<|im_end|>``=7 (``<|im_sep|>``=8; 3-5 are
  reserved placeholders here) as single pieces, no dummy-prefix space, ``add_bos_token: false``, ``legacy: true``,
  ``eos_token`` ``<|im_end|>``.
* :func:`build_bpe_tokenizer`: a ``tokenizers`` BPE ``tokenizer.json`` wrapped in ``PreTrainedTokenizerFast`` whose
  post-processor prepends ``<s>`` (no ``tokenizer.model``).

The sentencepiece folders have no ``tokenizer.json``: transformers converts the model when loading, as it does for
a checkpoint saved by transformers 4's slow tokenizer. The same arguments give byte-identical files. The facts behind
each layout are in :mod:`llava._tokenization`'s docstring.

Command line: ``python -m llava.tools.tiny_tokenizer OUT_DIR [--kind sentencepiece|mistral|yi|bpe] [--vocab-size N]``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import random
import string
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = [
    "build_bpe_tokenizer",
    "build_mistral_tokenizer",
    "build_sentencepiece_llama_tokenizer",
    "build_yi_tokenizer",
    "main",
]

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
YI_BOS, YI_EOS = "<|startoftext|>", "<|endoftext|>"
IM_START, IM_END, IM_SEP = "<|im_start|>", "<|im_end|>", "<|im_sep|>"
#: Yi's reserved pieces 3..8, in order (3-5 are placeholders: the tiny model only needs the ChatML ones at 6-8)
YI_USER_DEFINED = ("<|reserved_3|>", "<|reserved_4|>", "<|reserved_5|>", IM_START, IM_END, IM_SEP)

# Prompt-like English. Repeated many times so that its words are merged first and read as whole pieces.
_ENGLISH = """\
A chat between a curious user and an artificial intelligence assistant.
The assistant gives helpful, detailed, and polite answers to the user's questions.
USER: What is the color of the cat in the image? ASSISTANT: The cat is black and white.
USER: Describe the image in detail. ASSISTANT: The image shows a dog sitting on a green sofa next to a red ball.
USER: What is shown in this image? ASSISTANT: A man is riding a bike down a busy street in the city.
USER: How many people are there in the picture? ASSISTANT: There are two people standing near a blue car.
USER: Is there a cat on the table? ASSISTANT: No, there is a small brown dog under the table.
USER: What color is the sky? ASSISTANT: The sky is bright blue with a few white clouds.
Answer the question using a single word or phrase.
Answer with the option's letter from the given choices directly.
Please describe this image briefly. What are the things I should be cautious about when I visit here?
Human: Hello! Can you tell me what this picture is about? Assistant: Of course, it is a photo of a kitchen.
The woman holds an umbrella while the children play with a kite in the park near the river.
There is a yellow bus, a train, two horses, three birds, a tree, a house, a road and a bridge.
Question: Is the dog to the left or to the right of the cat? Answer: The dog is to the left.
You are a helpful language and vision assistant. You are able to understand the visual content.
"""

_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


# Template-shaped lines for the Mistral and Yi models, so that their chat markup merges into a few pieces.
_INST_LINES = (
    "[INST] What is shown in this image? [/INST] A man is riding a bike down a busy street.",
    "[INST] Describe the image in detail. [/INST] The image shows a dog sitting on a green sofa.",
    "[INST] What color is the sky? [/INST] The sky is bright blue. [INST] Is there a cat? [/INST] No.",
)
_CHATML_LINES = (
    "<|im_start|>system",
    "Answer the questions.<|im_end|><|im_start|>user",
    "What is shown in this image?<|im_end|><|im_start|>assistant",
    "A man is riding a bike down a busy street.<|im_end|><|im_start|>user",
    "Describe the image in detail.<|im_end|><|im_start|>assistant",
)


def _corpus(repeats: int = 24, pseudo_words: int = 3000, seed: int = 0, extra: Sequence[str] = ()) -> list[str]:
    """Training sentences: the English block (plus ``extra`` lines) ``repeats`` times, then seeded pseudo-words.

    The pseudo-words give BPE enough distinct merges to reach a requested vocabulary size of a few thousand.
    """
    rng = random.Random(seed)
    lines = (_ENGLISH.splitlines() + list(extra)) * repeats
    words = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(pseudo_words)]
    lines += [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    lines.append("0123456789 .,;:!?'\"()[]{}<>-_/\\|@#$%^&*+=~`")
    return lines


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _added_token(content: str) -> dict:
    """A special-token entry as Vicuna-v1.5's tokenizer_config.json spells it."""
    return {
        "__type": "AddedToken",
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
    }


def _decoder_entry(content: str, special: bool = True) -> dict:
    """An ``added_tokens_decoder`` entry as transformers 4.36/4.37 write it."""
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": special}


def _train_sentencepiece(
    out: Path,
    vocab_size: int,
    *,
    add_dummy_prefix: bool = True,
    bos_piece: str = BOS,
    eos_piece: str = EOS,
    user_defined: Sequence[str] = (),
    extra_lines: Sequence[str] = (),
) -> None:
    """Train a Llama-style BPE sentencepiece model on the embedded corpus and write ``out/tokenizer.model``.

    Ids: ``<unk>``=0, ``bos_piece``=1, ``eos_piece``=2, then ``user_defined`` (always one piece each), then the
    256 byte pieces and the merges. ``vocab_size`` must be in 300..4000.
    """
    import sentencepiece as spm

    if not 300 <= vocab_size <= 4000:
        raise ValueError(f"vocab_size must be in [300, 4000] for the embedded corpus, got {vocab_size}")
    out.mkdir(parents=True, exist_ok=True)
    options: dict = {"user_defined_symbols": list(user_defined)} if user_defined else {}
    if (bos_piece, eos_piece) != (BOS, EOS):
        options.update(bos_piece=bos_piece, eos_piece=eos_piece)
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus(extra=extra_lines)),
        model_writer=buffer,
        vocab_size=vocab_size,
        model_type="bpe",
        # Llama's trainer and normaliser settings (Mistral's and Yi's are the same but for the dummy prefix).
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        add_dummy_prefix=add_dummy_prefix,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        unk_surface=" \u2047 ",
        # Determinism and quiet.
        num_threads=1,
        shuffle_input_sentence=False,
        max_sentence_length=8192,
        minloglevel=2,
        **options,
    )
    tmp = out / "tokenizer.model.tmp"
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, out / "tokenizer.model")


def build_sentencepiece_llama_tokenizer(
    out_dir: str | os.PathLike,
    vocab_size: int = 1000,
    *,
    pad_token: str | None = UNK,
    model_max_length: int = 4096,
) -> None:
    """Train a Llama-style sentencepiece model and write a released-checkpoint tokenizer folder.

    Args:
        out_dir: folder to create or fill (``tokenizer.model``, ``tokenizer_config.json``, ``special_tokens_map.json``).
        vocab_size: exact sentencepiece vocabulary size (3 specials + 256 byte pieces + merges); 300..4000.
        pad_token: ``"<unk>"`` as LLaVA-1.5 releases ship, or ``None`` as Vicuna-v1.5 ships.
        model_max_length: written to ``tokenizer_config.json``.

    The loaded tokenizer has ``unk_token_id=0``, ``bos_token_id=1``, ``eos_token_id=2`` and adds ``<s>`` only.
    """
    out = Path(out_dir)
    _train_sentencepiece(out, vocab_size)
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": _added_token(BOS),
        "clean_up_tokenization_spaces": False,
        "eos_token": _added_token(EOS),
        "legacy": False,
        "model_max_length": model_max_length,
        "pad_token": pad_token,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": _added_token(UNK),
    }
    special = {"bos_token": _added_token(BOS), "eos_token": _added_token(EOS), "unk_token": _added_token(UNK)}
    if pad_token is not None:
        special["pad_token"] = pad_token
    for entry in special.values():
        if isinstance(entry, dict):
            entry.pop("__type")
    _write_json(out / "tokenizer_config.json", config)
    _write_json(out / "special_tokens_map.json", special)
    logger.info("wrote sentencepiece Llama tokenizer (vocab %d) to %s", vocab_size, out)


def build_mistral_tokenizer(
    out_dir: str | os.PathLike,
    vocab_size: int = 1000,
    *,
    pad_token: str | None = UNK,
    model_max_length: int = 4096,
) -> None:
    """Write a tokenizer folder laid out like llava-v1.6-mistral-7b's (Mistral-7B-Instruct-v0.2's tokenizer).

    Args:
        out_dir: folder to create or fill (``tokenizer.model``, ``tokenizer_config.json``, ``special_tokens_map.json``).
        vocab_size: exact vocabulary size (3 specials + 256 byte pieces + merges); 300..4000.
        pad_token: ``"<unk>"`` as LLaVA's training sets it, or ``None`` as Mistral-7B-Instruct-v0.2 ships.
        model_max_length: written to ``tokenizer_config.json``.

    A Llama-style sentencepiece BPE (``<unk>``=0, ``<s>``=1, ``</s>``=2, dummy prefix on) with Mistral's config:
    ``LlamaTokenizer``, ``legacy: true``, ``add_bos_token: true``, ``add_eos_token: false``. The loaded tokenizer
    adds ``<s>`` only; ``</s>`` (``mistral_instruct``'s stop string) is id 2.
    """
    out = Path(out_dir)
    _train_sentencepiece(out, vocab_size, extra_lines=_INST_LINES)
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {"0": _decoder_entry(UNK), "1": _decoder_entry(BOS), "2": _decoder_entry(EOS)},
        "additional_special_tokens": [],
        "bos_token": BOS,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS,
        "legacy": True,
        "model_max_length": model_max_length,
        "pad_token": pad_token,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "spaces_between_special_tokens": False,
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": UNK,
        "use_default_system_prompt": False,
    }
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK}
    if pad_token is not None:
        special["pad_token"] = pad_token
    _write_json(out / "tokenizer_config.json", config)
    _write_json(out / "special_tokens_map.json", special)
    logger.info("wrote Mistral-style tokenizer (vocab %d) to %s", vocab_size, out)


def build_yi_tokenizer(
    out_dir: str | os.PathLike,
    vocab_size: int = 1000,
    *,
    model_max_length: int = 4096,
) -> None:
    """Write a tokenizer folder laid out like llava-v1.6-34b's (Nous-Hermes-2-Yi-34B's tokenizer).

    Args:
        out_dir: folder to create or fill (``tokenizer.model``, ``tokenizer_config.json``, ``special_tokens_map.json``).
        vocab_size: exact vocabulary size (3 specials + 6 reserved + 256 byte pieces + merges); 300..4000.
        model_max_length: written to ``tokenizer_config.json``.

    A sentencepiece BPE with Yi's ids (``<unk>``=0, ``<|startoftext|>``=1, ``<|endoftext|>``=2, ``<|im_start|>``=6,
    ``<|im_end|>``=7, ``<|im_sep|>``=8, each a single piece), no dummy-prefix space (Yi's normaliser), and the
    config Yi's Llama-compatible releases and Nous-Hermes-2 use: ``LlamaTokenizer``, ``legacy: true``,
    ``add_bos_token: false``, ``bos_token`` ``<|startoftext|>``, ``eos_token`` ``<|im_end|>`` (chatml_direct's stop
    string), ``pad_token`` / ``unk_token`` ``<unk>``; the two ChatML tokens are listed as added tokens. The loaded
    tokenizer adds nothing in front of a prompt.
    """
    out = Path(out_dir)
    _train_sentencepiece(out, vocab_size, add_dummy_prefix=False, bos_piece=YI_BOS, eos_piece=YI_EOS,
                         user_defined=YI_USER_DEFINED, extra_lines=_CHATML_LINES)
    decoder = {"0": _decoder_entry(UNK), "1": _decoder_entry(YI_BOS), "2": _decoder_entry(YI_EOS)}
    decoder.update({"6": _decoder_entry(IM_START), "7": _decoder_entry(IM_END)})
    config = {
        "add_bos_token": False,
        "add_eos_token": False,
        "added_tokens_decoder": decoder,
        "bos_token": YI_BOS,
        "clean_up_tokenization_spaces": False,
        "eos_token": IM_END,
        "legacy": True,
        "model_max_length": model_max_length,
        "pad_token": UNK,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": UNK,
        "use_default_system_prompt": False,
    }
    special = {key: _added_token(value) for key, value in
               (("bos_token", YI_BOS), ("eos_token", IM_END), ("pad_token", UNK), ("unk_token", UNK))}
    for entry in special.values():
        entry.pop("__type")
    _write_json(out / "tokenizer_config.json", config)
    _write_json(out / "special_tokens_map.json", special)
    logger.info("wrote Yi-style tokenizer (vocab %d) to %s", vocab_size, out)


def build_bpe_tokenizer(
    out_dir: str | os.PathLike,
    vocab_size: int = 1000,
    *,
    model_max_length: int = 4096,
) -> None:
    """Train a ``tokenizers`` BPE (Metaspace pre-tokenizer, like Llama) and save it as a fast tokenizer folder.

    Args:
        out_dir: folder to create or fill (``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``).
        vocab_size: target vocabulary size including ``<unk>``=0, ``<s>``=1, ``</s>``=2 (the corpus caps it).
        model_max_length: written to ``tokenizer_config.json``.

    Encoding adds ``<s>`` in front through a ``TemplateProcessing`` post-processor; characters outside printable
    ASCII and newline map to ``<unk>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[UNK, BOS, EOS],
        initial_alphabet=sorted(set(string.printable) | {"\u2581"}),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=UNK,
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(str(out_dir))
    logger.info("wrote BPE tokenizer (vocab %d) to %s", tokenizer.get_vocab_size(), out_dir)


_BUILDERS = {
    "sentencepiece": build_sentencepiece_llama_tokenizer,
    "mistral": build_mistral_tokenizer,
    "yi": build_yi_tokenizer,
    "bpe": build_bpe_tokenizer,
}


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--kind", choices=sorted(_BUILDERS), default="sentencepiece")
    parser.add_argument("--vocab-size", type=int, default=1000)
    args = parser.parse_args(argv)
    _BUILDERS[args.kind](args.out_dir, args.vocab_size)


if __name__ == "__main__":
    main()
