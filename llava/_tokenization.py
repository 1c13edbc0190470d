"""Text-to-ids exactly as LLaVA checkpoints saw them in training (transformers 4.31-4.37's slow ``LlamaTokenizer``).

Why this module exists: released LLaVA-1.5 / Vicuna-v1.5 checkpoints ship a sentencepiece ``tokenizer.model`` with
``"tokenizer_class": "LlamaTokenizer"`` and ``"legacy": false``, and upstream always loads it with
``use_fast=False``. transformers 5.x has no sentencepiece-backed Llama class any more: ``AutoTokenizer`` converts
the model into ``LlamaTokenizer(TokenizersBackend)`` (a ``tokenizers`` BPE with a ``Metaspace`` pre-tokenizer,
``prepend_scheme="first"``). That class folds a leading space into the dummy prefix, so a chunk such as
``" What"`` (text after ``<image>`` or ``<image-placeholder>``) becomes ``<s> ▁What`` where the slow tokenizer gave
``<s> ▁ ▁What``. :func:`encode_text` restores the slow ids.

The slow (legacy=False) algorithm, as in transformers 4.37 ``LlamaTokenizer.tokenize`` / ``_tokenize``:

1. Replace ``"▁"`` in the text with a space and prepend one ``"▁"`` (when ``add_prefix_space``, the default).
2. Split on added tokens (``<s>``, ``</s>``, ``<unk>``, tokens added later); those map to their ids.
3. Each remaining piece is encoded by the sentencepiece model with ``add_dummy_prefix`` switched off. A piece that
   starts with ``"▁"`` or a space is encoded as ``unk_token + piece`` and the pieces of ``unk_token`` are dropped,
   which keeps sentencepiece from touching the leading whitespace.
4. A lone leading ``"▁"`` directly followed by a special token is dropped.

With ``legacy=True`` (configs written before the flag existed) step 1 is skipped and step 3 is a plain encode with
the model's own dummy prefix.

Tokenizers without a sentencepiece model (``tokenizers`` BPE, ``tokenizer.json`` only) and tokenizers that are
already sentencepiece-backed (they have ``sp_model``) are used as they are.

Which checkpoints this covers. Every released LLaVA checkpoint declares ``LlamaTokenizer`` and upstream loads it with
``use_fast=False``, so the ids each was trained with are the slow ``LlamaTokenizer``'s, run on the checkpoint's *own*
``tokenizer.model`` with its *own* ``legacy``, ``add_bos_token`` and added tokens. Nothing here is specific to the
Llama/Vicuna vocabulary:

* LLaVA-1.5, llava-v1.6-vicuna (Vicuna-v1.5's Llama-2 model): ``legacy: false``, ``add_bos_token: true`` (``<s>``).
* llava-v1.6-mistral-7b (Mistral-7B-Instruct-v0.2's 32000-piece model; the checkpoint was saved by transformers
  4.36.2, per its generation_config.json): Mistral's tokenizer_config.json declares ``LlamaTokenizer``,
  ``legacy: true``, ``add_bos_token: true``, ``add_eos_token: false``, added tokens ``<unk>``/``<s>``/``</s>`` = 0/1/2.
  With ``legacy: true`` each stretch of text between special tokens is encoded with the model's own dummy prefix:
  ``"[INST] "`` is encoded as ``"▁[INST]▁"``, and text after ``</s>`` gets its ``▁`` too.
* llava-v1.6-34b (Nous-Hermes-2-Yi-34B, 64000 pieces, ``eos_token_id`` 7): special_tokens_map.json has ``bos_token``
  ``<|startoftext|>`` (1), ``eos_token`` ``<|im_end|>``, ``pad_token``/``unk_token`` ``<unk>`` (0); Yi's
  Llama-compatible tokenizer_config.json has ``LlamaTokenizer``, ``legacy: true``, ``add_bos_token: false``; the
  ChatML tokens ``<|im_start|>`` (6) and ``<|im_end|>`` (7) are pieces of Yi's own vocabulary (listed as added tokens
  by Yi chat fine-tunes). Yi's sentencepiece normaliser adds no dummy prefix (transformers 4.41's slow tokenizer
  encodes Yi-1.5's ``"<|im_end|>\\n"`` as ``[7, 144]``, no ``▁``). So a chatml_direct prompt gets no BOS and no
  ``▁`` after the ChatML tokens.

transformers 5 gets all three wrong in its own way (it folds a leading space into the prefix, and prepends ``▁`` to
Yi text, which Yi's model never does), so :func:`encode_text` applies to each kind. Sources: the checkpoints'
tokenizer_config.json / special_tokens_map.json / config.json on the Hugging Face hub (liuhaotian/llava-v1.6-*,
mistralai/Mistral-7B-Instruct-v0.2, NousResearch/Nous-Hermes-2-Yi-34B, 01-ai/Yi-6B), 01-ai/Yi-1.5 issue 37 for
Yi's missing prefix. :mod:`llava.tools.tiny_tokenizer` builds a tiny tokenizer of each kind; on those, the ids here
were checked against transformers 4.37.2's slow tokenizer.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import warnings
from typing import Any

logger = logging.getLogger(__name__)

SPIECE_UNDERLINE = "\u2581"
_LLAMA_CLASS_NAMES = frozenset({"LlamaTokenizer", "LlamaTokenizerFast", "CodeLlamaTokenizer", "CodeLlamaTokenizerFast"})


@functools.lru_cache(maxsize=16)
def _load_processor(path: str, mtime_ns: int, size: int, add_dummy_prefix: bool | None) -> Any:
    """A ``SentencePieceProcessor`` for ``path``; ``add_dummy_prefix`` forced unless None; cached per file version."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    with open(path, "rb") as f:
        proto.ParseFromString(f.read())
    if add_dummy_prefix is not None:
        proto.normalizer_spec.add_dummy_prefix = add_dummy_prefix
    processor = spm.SentencePieceProcessor()
    processor.LoadFromSerializedProto(proto.SerializeToString())
    return processor


@functools.lru_cache(maxsize=16)
def _config_legacy(config_path: str, mtime_ns: int) -> bool | None:
    """``legacy`` as the 4.x slow tokenizer read it from ``tokenizer_config.json``.

    Absent means True (4.x's default) in a config written by transformers 4; ``None`` (ask the tokenizer) for an
    unreadable config or one written by transformers 5 (it has a ``"backend"`` key and never stores ``legacy``).
    """
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    legacy = config.get("legacy")
    if legacy is None:
        return None if "backend" in config else True
    return bool(legacy)


def _processor_for(path: str, add_dummy_prefix: bool | None) -> Any:
    stat = os.stat(path)
    return _load_processor(os.path.realpath(path), stat.st_mtime_ns, stat.st_size, add_dummy_prefix)


def _is_llama_like(tokenizer: Any) -> bool:
    names = {cls.__name__ for cls in type(tokenizer).__mro__}
    return bool(names & _LLAMA_CLASS_NAMES)


def sentencepiece_model_file(tokenizer: Any) -> str | None:
    """The ``tokenizer.model`` whose slow behaviour must be reproduced for ``tokenizer``, or ``None``.

    ``None`` unless ``tokenizer`` is a Llama tokenizer that is not sentencepiece-backed itself, a sentencepiece
    model file is found (its ``vocab_file``, or ``tokenizer.model`` beside ``name_or_path``) and the model agrees
    with the tokenizer's vocabulary on the special tokens and a sample of pieces.
    """
    if hasattr(tokenizer, "sp_model") or not _is_llama_like(tokenizer):
        return None
    candidates = [getattr(tokenizer, "vocab_file", None)]
    name_or_path = getattr(tokenizer, "name_or_path", None)
    if name_or_path:
        candidates.append(os.path.join(str(name_or_path), "tokenizer.model"))
    path = next((str(c) for c in candidates if c and os.path.isfile(str(c))), None)
    if path is None:
        return None
    processor = _processor_for(path, add_dummy_prefix=False)
    size = processor.get_piece_size()
    sample = sorted({0, 1, 2, size // 7, size // 3, size // 2, size - 1} & set(range(size)))
    if list(tokenizer.convert_ids_to_tokens(sample)) != [processor.id_to_piece(i) for i in sample]:
        warnings.warn(
            f"{path} does not match the tokenizer's vocabulary; using the tokenizer's own (transformers 5) ids",
            stacklevel=3,
        )
        return None
    return path


def _legacy_flag(tokenizer: Any, model_file: str) -> bool:
    config_path = os.path.join(os.path.dirname(model_file), "tokenizer_config.json")
    if os.path.isfile(config_path):
        legacy = _config_legacy(config_path, os.stat(config_path).st_mtime_ns)
        if legacy is not None:
            return legacy
    return bool(getattr(tokenizer, "legacy", False))


def _added_tokens(tokenizer: Any) -> dict[str, int]:
    """Every token the slow tokenizer would never split: added vocabulary plus special tokens."""
    added = dict(tokenizer.get_added_vocab())
    for token in tokenizer.all_special_tokens:
        if token not in added:
            added[token] = tokenizer.convert_tokens_to_ids(token)
    return added


def _split_on_added(text: str, tokenizer: Any, added: dict[str, int]) -> list[str]:
    """Leftmost-longest split on added tokens, honouring their ``lstrip``/``rstrip`` flags; empty parts dropped."""
    if not added:
        return [text] if text else []
    pattern = "(" + "|".join(re.escape(t) for t in sorted(added, key=len, reverse=True)) + ")"
    parts = re.split(pattern, text)
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    for i, part in enumerate(parts):
        if i % 2 == 0:
            continue  # odd indices are the captured added tokens
        token = decoder.get(added[part])
        if token is not None and getattr(token, "rstrip", False) and i + 1 < len(parts):
            parts[i + 1] = parts[i + 1].lstrip()
        if token is not None and getattr(token, "lstrip", False):
            parts[i - 1] = parts[i - 1].rstrip()
    return [p for p in parts if p]


def _slow_llama_ids(tokenizer: Any, text: str, model_file: str) -> list[int]:
    """Ids of ``text`` (no BOS/EOS) as transformers 4.37's slow ``LlamaTokenizer`` computes them."""
    if not text:
        return []
    legacy = _legacy_flag(tokenizer, model_file)
    # legacy: the model as shipped; otherwise without the dummy prefix (the slow tokenizer adds "▁" itself).
    processor = _processor_for(model_file, add_dummy_prefix=None if legacy else False)
    if not legacy:
        text = text.replace(SPIECE_UNDERLINE, " ")
        if getattr(tokenizer, "add_prefix_space", True) is not False:
            text = SPIECE_UNDERLINE + text
    added = _added_tokens(tokenizer)
    # Slow tokenizers counted tokens added with special=True (e.g. <im_start>) among all_special_tokens.
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    special = set(tokenizer.all_special_tokens) | {str(t) for t in decoder.values() if getattr(t, "special", False)}
    unk_len = len(processor.encode(str(tokenizer.unk_token)))

    pieces: list[tuple[int, bool]] = []  # (id, came from a special token)
    for part in _split_on_added(text, tokenizer, added):
        if part in added:
            pieces.append((added[part], part in special))
            continue
        if legacy or not part.startswith((SPIECE_UNDERLINE, " ")):
            part_ids = processor.encode(part)
        else:
            part_ids = processor.encode(str(tokenizer.unk_token) + part)
            part_ids = part_ids[unk_len:] if len(part_ids) >= unk_len else part_ids
        pieces.extend((i, False) for i in part_ids)
    if (
        not legacy
        and len(pieces) > 1
        and pieces[1][1]
        and not pieces[0][1]
        and processor.id_to_piece(pieces[0][0]) == SPIECE_UNDERLINE
    ):
        pieces = pieces[1:]
    return [i for i, _ in pieces]


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens, as the checkpoint's training-time tokenizer produced them.

    Args:
        tokenizer: any Hugging Face tokenizer.
        text: plain text (may contain special-token strings such as ``</s>``).

    Returns:
        ``list[int]`` of length T. For sentencepiece Llama tokenizers these are the slow tokenizer's ids (see the
        module docstring); otherwise ``tokenizer(text, add_special_tokens=False).input_ids``.
    """
    model_file = sentencepiece_model_file(tokenizer)
    if model_file is None:
        return list(tokenizer(text, add_special_tokens=False).input_ids)
    return _slow_llama_ids(tokenizer, text, model_file)


def adds_bos_token(tokenizer: Any) -> bool:
    """Whether ``tokenizer(text)`` puts ``bos_token_id`` in front (probed on the empty string)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    probe = tokenizer("", add_special_tokens=True).input_ids
    return len(probe) > 0 and probe[0] == bos


def save_tokenizer(tokenizer: Any, save_directory: str | os.PathLike) -> None:
    """``tokenizer.save_pretrained(save_directory)``, keeping what :func:`encode_text` needs to reproduce slow ids.

    transformers 5 saves a tokenizer converted from ``tokenizer.model`` as ``tokenizer.json`` plus
    ``tokenizer_config.json`` only, without the sentencepiece model and without ``legacy``; reloading that folder
    would tokenize like transformers 5 again. For sentencepiece Llama tokenizers this also copies
    ``tokenizer.model`` into the folder and records ``legacy`` in its ``tokenizer_config.json`` (both written to a
    temporary name first, then renamed). Other tokenizers are saved unchanged.
    """
    import shutil

    model_file = sentencepiece_model_file(tokenizer)
    legacy = _legacy_flag(tokenizer, model_file) if model_file else None
    tokenizer.save_pretrained(str(save_directory))
    if model_file is None:
        return
    target = os.path.join(str(save_directory), "tokenizer.model")
    if not (os.path.exists(target) and os.path.samefile(model_file, target)):
        shutil.copyfile(model_file, target + ".tmp")
        os.replace(target + ".tmp", target)
    config_path = os.path.join(str(save_directory), "tokenizer_config.json")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    config["legacy"] = legacy
    with open(config_path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(config_path + ".tmp", config_path)


_LLAMA_TOKENIZER_CLASSES = ("LlamaTokenizer", "LlamaTokenizerFast")


def _declared_tokenizer_class(name_or_path: str, **kwargs: Any) -> str | None:
    from transformers.models.auto.tokenization_auto import get_tokenizer_config

    try:
        return get_tokenizer_config(name_or_path, **kwargs).get("tokenizer_class")
    except (OSError, ValueError):
        return None


def load_tokenizer(name_or_path: str, *, cache_dir: str | None = None, model_max_length: int | None = None,
                   padding_side: str | None = None, **hub_kwargs: Any) -> Any:
    """The checkpoint's tokenizer, as a ``LlamaTokenizer`` when its ``tokenizer_config.json`` says so.

    ``AutoTokenizer`` on a folder whose ``config.json`` says ``model_type: "llava"`` (every released LLaVA-1.5 and
    LLaVA-1.6 checkpoint; ``"llava_mistral"`` for llava-v1.6-mistral-7b) ignores the declared ``LlamaTokenizer`` and
    builds a generic tokenizers class that drops Llama's word-start marker on the first word (``"The"`` -> ``T he``
    instead of ``▁The``): ids the model never saw. Mistral's and Yi's tokenizers declare ``LlamaTokenizer`` too and
    load the same way, each with its own model file and flags (see the module docstring).
    """
    import transformers

    kwargs: dict[str, Any] = {"cache_dir": cache_dir, **hub_kwargs}  # revision, local_files_only, token
    if padding_side is not None:
        kwargs["padding_side"] = padding_side
    if model_max_length is not None:
        kwargs["model_max_length"] = model_max_length
    declared = _declared_tokenizer_class(name_or_path, cache_dir=cache_dir, **hub_kwargs)
    if declared in _LLAMA_TOKENIZER_CLASSES:
        return transformers.LlamaTokenizer.from_pretrained(name_or_path, **kwargs)
    return transformers.AutoTokenizer.from_pretrained(name_or_path, **kwargs)
