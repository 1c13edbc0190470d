"""Upstream LLaVA's ``llava/train/train.py`` helpers, with upstream's signatures, on the package's own modules.

Custom data scripts and notebooks written against upstream import these from ``llava.train.train``, which
re-exports them: ``preprocess``, ``preprocess_multimodal``, ``preprocess_v1``, ``preprocess_llama_2``,
``preprocess_mpt``, ``preprocess_plain``, ``_tokenize_fn``, ``_mask_targets``, ``safe_save_model_for_hf_trainer``,
``rank0_print`` (and ``smart_tokenizer_and_embedding_resize``, which lives in ``model_setup``). The package's own
training code does not use them: it passes the template explicitly (``preprocess.preprocess``).

Upstream's conventions, kept here:

* ``sources`` is a batch of N conversations, each a list of turns ``{"from": "human" | "gpt", "value": text}``.
* The template is ``llava.conversation.default_conversation``, read at call time: upstream scripts choose it by
  reassigning that attribute (``conversation_lib.default_conversation = conv_templates[version]``).
* The ``preprocess_*`` functions return ``dict(input_ids=..., labels=...)``, labels IGNORE_INDEX outside the
  assistant replies. Chat templates (v1, llama_2, mpt) give ``[N, T]`` tensors (upstream stacks; rows of different
  lengths are right-padded here with ``pad_token_id`` / IGNORE_INDEX, where upstream's ``has_image=True`` path
  fails); ``preprocess_plain`` and the legacy ``###`` path give lists of N ``[T_i]`` tensors. Upstream callers
  take ``out["input_ids"][0]`` for one conversation: both kinds allow it.
* ``has_image=True``: ``"<image>"`` becomes IMAGE_TOKEN_INDEX (-200); ``has_image=False`` tokenizes the text as it
  is and cuts each conversation to ``tokenizer.model_max_length`` (upstream's text-only path).

What differs behind the names: the label boundaries of the chat templates are measured, not computed from
vocabulary-dependent offsets (``preprocess.tokenize_chat``; equal wherever upstream's offsets are right); upstream's
``"WARNING: tokenization mismatch"`` print is a logged warning, the sample's labels still all masked; inputs are
not modified except by ``preprocess_multimodal``, whose job that is; a malformed conversation raises
``ConversationError`` (a ValueError) instead of an assert or KeyError.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .. import conversation as conversation_lib
from ..constants import IGNORE_INDEX
from ..conversation import Conversation, SeparatorStyle
from ..mm_utils import tokenizer_image_token
from .preprocess import TokenizedConversation, check_turns, move_image_to_front, text_ids, tokenize_chat, tokenize_plain
from .saving import save_projector, upstream_projector_copy

logger = logging.getLogger(__name__)

__all__ = [
    "_mask_targets",
    "_tokenize_fn",
    "preprocess",
    "preprocess_llama_2",
    "preprocess_mpt",
    "preprocess_multimodal",
    "preprocess_plain",
    "preprocess_v1",
    "rank0_print",
    "safe_save_model_for_hf_trainer",
]

#: upstream's legacy (``###``, SeparatorStyle.SINGLE) rendering: "### " + role + ": " + text + "\n" per turn
_LEGACY_BEGIN, _LEGACY_END = "### ", "\n"


# ---------------------------------------------------------------------------------------------------- ranks


def _local_rank() -> int:
    """This process's local rank: ``LOCAL_RANK`` (set by torchrun / deepspeed), else the ``torch.distributed``
    rank, else -1 (a single process)."""
    value = os.environ.get("LOCAL_RANK", "").strip()
    if value:
        return int(value)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return -1


def rank0_print(*args: Any) -> None:
    """``print(*args)`` on local rank 0 or in a single process; nothing on the other ranks.

    The rank is read at each call (upstream read a module global that its ``train()`` set, so nothing printed
    before ``train()`` ran, nor in a single process).
    """
    if _local_rank() in (0, -1):
        print(*args)


# ---------------------------------------------------------------------------------------------------- saving


def _trainer_flag(trainer: Any, name: str) -> bool:
    # upstream's train() sets these on trainer.args at run time; LLaVATrainer keeps them as attributes
    return bool(getattr(trainer.args, name, False) or getattr(trainer, name, False))


def safe_save_model_for_hf_trainer(trainer: Any, output_dir: str) -> None:
    """Save what a run trained into ``output_dir`` (call on every rank: ZeRO-3 weights are gathered).

    * Projector-only runs (``trainer.args.tune_mm_mlp_adapter``, as upstream sets it, or
      ``LLaVATrainer(tune_mm_mlp_adapter=True)``): ``mm_projector.bin`` and ``config.json``
      (``saving.save_projector``; with the ``embed_tokens`` rows when ``use_im_start_end``). A ``checkpoint-N``
      folder also gets ``<run>/mm_projector/checkpoint-N.bin``, where upstream wrote its only copy.
    * Otherwise ``trainer.save_model(output_dir)``: under DeepSpeed as upstream; without it, upstream's
      "state dict to CPU, ``trainer._save`` on the saving rank" is what ``save_model`` does. ``LLaVATrainer``
      writes ``model.safetensors``, ``config.json`` and the tokenizer, leaving out the CLIP weights of a frozen
      ``mm_vision_tower`` folder tower (see ``saving``).
    """
    if _trainer_flag(trainer, "tune_mm_mlp_adapter"):
        save_projector(trainer.model, output_dir, use_im_start_end=_trainer_flag(trainer, "use_im_start_end"),
                       is_main_process=trainer.args.should_save, copy_to=upstream_projector_copy(output_dir))
        return
    trainer.save_model(output_dir)


# ---------------------------------------------------------------------------------------------------- tokens


def _tokenize_fn(strings: Sequence[str], tokenizer: Any) -> dict[str, list]:
    """Tokenize each string on its own (BOS in front when the tokenizer adds one), cut to ``model_max_length``.

    Returns:
        ``dict(input_ids=[N x [T_i]], labels=[N x [T_i]], input_ids_lens=[N ints], labels_lens=[N ints])``; labels
        are copies of the ids and the lengths are the ``T_i`` (upstream counted the ids that differ from
        ``pad_token_id``, which is the same unless the text itself tokenizes to the pad id).
    """
    input_ids = [_truncated(torch.tensor(text_ids(text, tokenizer), dtype=torch.long), tokenizer) for text in strings]
    lens = [int(ids.numel()) for ids in input_ids]
    return dict(input_ids=input_ids, labels=[ids.clone() for ids in input_ids], input_ids_lens=lens,
                labels_lens=list(lens))


def _mask_targets(target: torch.Tensor, tokenized_lens: Sequence[int], speakers: Sequence[str]) -> None:
    """Upstream's legacy label mask, in place on ``target`` ``[T]``.

    ``tokenized_lens`` are the token counts of the header and then of each turn (each counted on its own, as
    ``_tokenize_fn`` gives them); ``speakers`` the turns' "from". The header is masked, and each "human" turn is
    masked except its first two positions (upstream's offset); "gpt" turns stay labels.
    """
    start = tokenized_lens[0]
    target[:start] = IGNORE_INDEX
    for length, speaker in zip(tokenized_lens[1:], speakers):
        if speaker == "human":
            target[start + 2 : start + length] = IGNORE_INDEX
        start += length


def _truncated(ids: torch.Tensor, tokenizer: Any) -> torch.Tensor:
    max_len = tokenizer.model_max_length
    return ids[: int(max_len)] if ids.numel() > max_len else ids


# ---------------------------------------------------------------------------------------------------- preprocess


def preprocess_multimodal(sources: list[list[dict[str, str]]], data_args: Any) -> list[list[dict[str, str]]]:
    """Put ``<image>`` in front of each turn that mentions it, in place; returns ``sources``.

    Nothing changes unless ``data_args.is_multimodal``. ``"<image>\\n" + text``; ``<Image><image></Image>`` when
    the default conversation is an ``mmtag`` one; ``<im_start><image><im_end>`` when
    ``data_args.mm_use_im_start_end`` (upstream's ``train()`` sets that attribute; absent means False).
    """
    if not data_args.is_multimodal:
        return sources
    mmtag = "mmtag" in conversation_lib.default_conversation.version
    start_end = bool(getattr(data_args, "mm_use_im_start_end", False))
    for source in sources:
        moved = move_image_to_front(source, mm_use_im_start_end=start_end, mmtag=mmtag)
        for turn, new in zip(source, moved):
            turn["value"] = new["value"]
    return sources


def _chat_template(style: SeparatorStyle, function: str) -> Conversation:
    template = conversation_lib.default_conversation
    if template.sep_style != style:
        raise ValueError(
            f"{function} needs llava.conversation.default_conversation with sep_style {style.name}, got "
            f"{template.sep_style.name} (version {template.version!r}); preprocess() picks the function for it"
        )
    return template


def _padded(rows: list[TokenizedConversation], tokenizer: Any) -> dict[str, torch.Tensor]:
    """N conversations -> ``input_ids`` / ``labels`` ``[N, T]`` (right-padded when their lengths differ)."""
    longest = max(row.input_ids.numel() for row in rows)
    if all(row.input_ids.numel() == longest for row in rows):
        return dict(input_ids=torch.stack([r.input_ids for r in rows]), labels=torch.stack([r.labels for r in rows]))
    if tokenizer.pad_token_id is None:
        raise ValueError("conversations of different lengths need a pad token; the tokenizer has none")
    input_ids = torch.full((len(rows), longest), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
    for n, row in enumerate(rows):
        input_ids[n, : row.input_ids.numel()] = row.input_ids
        labels[n, : row.labels.numel()] = row.labels
    return dict(input_ids=input_ids, labels=labels)


def _preprocess_chat(sources: Sequence[Sequence[Mapping[str, str]]], tokenizer: Any, has_image: bool,
                     style: SeparatorStyle, function: str) -> dict[str, torch.Tensor]:
    template = _chat_template(style, function)
    rows = []
    for i, source in enumerate(sources):
        check_turns(source)
        row = tokenize_chat(source, tokenizer, template, where=f"{function}: source {i}", has_image=has_image)
        if not has_image:
            row = TokenizedConversation(_truncated(row.input_ids, tokenizer), _truncated(row.labels, tokenizer))
        rows.append(row)
    if not rows:
        raise ValueError(f"{function}: sources is empty")
    return _padded(rows, tokenizer)


def preprocess_v1(sources: Sequence[Sequence[Mapping[str, str]]], tokenizer: Any,
                  has_image: bool = False) -> dict[str, torch.Tensor]:
    """Vicuna v1 (``SeparatorStyle.TWO``): each reply and its ``</s>`` are labels. ``[N, T]`` input_ids/labels."""
    return _preprocess_chat(sources, tokenizer, has_image, SeparatorStyle.TWO, "preprocess_v1")


def preprocess_llama_2(sources: Sequence[Sequence[Mapping[str, str]]], tokenizer: Any,
                       has_image: bool = False) -> dict[str, torch.Tensor]:
    """Llama-2 chat (``[INST] ... [/INST]``): each reply and its ``</s>`` are labels. ``[N, T]`` input_ids/labels."""
    return _preprocess_chat(sources, tokenizer, has_image, SeparatorStyle.LLAMA_2, "preprocess_llama_2")


def preprocess_mpt(sources: Sequence[Sequence[Mapping[str, str]]], tokenizer: Any,
                   has_image: bool = False) -> dict[str, torch.Tensor]:
    """ChatML (``<|im_start|>``, MPT style): each reply and its ``<|im_end|>`` are labels. ``[N, T]`` tensors."""
    return _preprocess_chat(sources, tokenizer, has_image, SeparatorStyle.MPT, "preprocess_mpt")


def preprocess_plain(sources: Sequence[Sequence[Mapping[str, str]]], tokenizer: Any) -> dict[str, list]:
    """Pretraining: ``"<image>" + caption + sep``, the caption and ``sep`` are labels (human text dropped).

    Returns:
        ``dict(input_ids=[N x [T_i]], labels=[N x [T_i]])``.
    Raises:
        ConversationError: a source without exactly two turns, the first mentioning ``<image>``.
    """
    template = conversation_lib.default_conversation
    rows = []
    for source in sources:
        check_turns(source)
        rows.append(tokenize_plain(source, tokenizer, template))
    return dict(input_ids=[r.input_ids for r in rows], labels=[r.labels for r in rows])


def _preprocess_legacy(sources: Sequence[Sequence[Mapping[str, str]]], tokenizer: Any, has_image: bool,
                       template: Conversation) -> dict[str, list]:
    """Upstream's fallback for the ``###`` templates (v0): ``system + "\\n\\n"``, then ``"### role: text\\n"`` per
    turn and a final ``"### "``; labels by ``_mask_targets``. Lists of N ``[T_i]`` tensors."""
    header = f"{template.system}\n\n"
    role_of = {"human": template.roles[0], "gpt": template.roles[1]}
    input_ids, labels = [], []
    for source in sources:
        check_turns(source)
        turns = [f"{_LEGACY_BEGIN}{role_of[t['from']]}: {t['value']}{_LEGACY_END}" for t in source]
        prompt = header + "".join(turns) + _LEGACY_BEGIN
        if has_image:
            ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")
            lens = [len(tokenizer_image_token(text, tokenizer)) for text in [header, *turns]]
        else:
            ids = _tokenize_fn([prompt], tokenizer)["input_ids"][0]
            lens = _tokenize_fn([header, *turns], tokenizer)["input_ids_lens"]
        target = ids.clone()
        _mask_targets(target, lens, [t["from"] for t in source])
        input_ids.append(ids)
        labels.append(target)
    return dict(input_ids=input_ids, labels=labels)


def preprocess(sources: Sequence[Sequence[Mapping[str, str]]], tokenizer: Any,
               has_image: bool = False) -> dict[str, Any]:
    """Tokenize a batch of conversations with ``llava.conversation.default_conversation`` (read at call time).

    Upstream's dispatch: sep_style PLAIN -> ``preprocess_plain``; LLAMA_2 -> ``preprocess_llama_2``; version
    starting "v1" -> ``preprocess_v1``; version "mpt" -> ``preprocess_mpt``; anything else (the ``###`` v0
    templates) -> the legacy path (``_tokenize_fn`` / ``_mask_targets``).

    Returns:
        ``dict(input_ids, labels)``: ``[N, T]`` tensors for the chat templates, lists of N ``[T_i]`` otherwise.
    """
    template = conversation_lib.default_conversation
    if template.sep_style == SeparatorStyle.PLAIN:
        return preprocess_plain(sources, tokenizer)
    if template.sep_style == SeparatorStyle.LLAMA_2:
        return preprocess_llama_2(sources, tokenizer, has_image=has_image)
    if template.version.startswith("v1"):
        return preprocess_v1(sources, tokenizer, has_image=has_image)
    if template.version == "mpt":
        return preprocess_mpt(sources, tokenizer, has_image=has_image)
    return _preprocess_legacy(sources, tokenizer, has_image, template)
