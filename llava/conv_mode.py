"""Which conversation template a model gets, from its name, and the string that ends its answers.

Two rules, both upstream LLaVA 1.2.2's, kept apart because upstream keeps them apart:

* :func:`infer_conv_mode` is the command-line rule (``llava/eval/run_llava.py`` and ``llava/serve/cli.py``):
  the first of "llama-2" -> ``llava_llama_2``, "mistral" -> ``mistral_instruct``, "v1.6-34b" -> ``chatml_direct``,
  "v1" -> ``llava_v1``, "mpt" -> ``mpt`` found in the lower-cased name, else ``llava_v0``.
  :func:`choose_conv_mode` adds the ``--conv-mode`` override: an explicit mode wins, with a warning when it differs
  from the inferred one.
* :func:`web_template_name` is the web demo's rule (the first round of ``http_bot`` in
  ``llava/serve/gradio_web_server.py``), which also looks at "mixtral", "orca", "hermes", "mmtag", "plain" and
  "finetune", and treats names without "llava" as text-only chat models. Upstream names two templates it never
  defines (``mistral_orca``, ``mpt_text``) and fails with ``KeyError`` on them; here a branch whose template is not
  in the table is skipped and the rule goes on to its next branch.

:func:`stop_string` is the web demo's stop string (``sep`` for SINGLE and MPT styles, ``sep2`` otherwise), used by
the terminal chat as well: ``"</s>"`` for ``llava_v1`` and ``mistral_instruct``, ``"<|im_end|>"`` for
``chatml_direct``, ``"###"`` for ``llava_v0``.
"""

from __future__ import annotations

import logging
from collections.abc import Container

from llava.conversation import Conversation, SeparatorStyle, conv_templates

logger = logging.getLogger(__name__)

__all__ = ["choose_conv_mode", "infer_conv_mode", "stop_string", "web_template_name"]


def infer_conv_mode(model_name: str) -> str:
    """The template upstream's ``run_llava`` / ``cli`` pick for ``model_name`` (``"llava-v1.5-7b"`` -> ``"llava_v1"``).

    The checks run in this order on the lower-cased name, so ``"llava-v1.6-mistral-7b"`` is ``mistral_instruct``
    (not ``llava_v1``) and ``"llava-v1.6-34b"`` is ``chatml_direct``.
    """
    name = model_name.lower()
    if "llama-2" in name:
        return "llava_llama_2"
    if "mistral" in name:
        return "mistral_instruct"
    if "v1.6-34b" in name:
        return "chatml_direct"
    if "v1" in name:
        return "llava_v1"
    if "mpt" in name:
        return "mpt"
    return "llava_v0"


def choose_conv_mode(model_name: str, requested: str | None) -> str:
    """``requested`` (``--conv-mode``) when given, else :func:`infer_conv_mode`'s choice.

    An explicit mode that differs from the inferred one is used as asked, with upstream's warning logged.

    Raises:
        ValueError: ``requested`` names no template in :data:`llava.conversation.conv_templates`.
    """
    inferred = infer_conv_mode(model_name)
    if not requested:
        return inferred
    if requested not in conv_templates:
        raise ValueError(f"unknown --conv-mode {requested!r}; valid modes are {', '.join(sorted(conv_templates))}")
    if requested != inferred:
        logger.warning("the auto inferred conversation mode is %s, while `--conv-mode` is %s, using %s",
                       inferred, requested, requested)
    return requested


def web_template_name(model_name: str, available: Container[str] | None = None) -> str:
    """The template the web demo starts a conversation with for ``model_name`` (upstream's ``http_bot`` rule).

    Args:
        model_name: the model's name as the controller lists it.
        available: template names that exist (default: :data:`llava.conversation.conv_templates`); a branch whose
            template is missing is skipped (upstream raised ``KeyError``).
    Returns:
        A key of ``available``; e.g. ``"llava-v1.6-mistral-7b"`` -> ``"mistral_instruct"``,
        ``"llava-v1.6-34b"`` -> ``"chatml_direct"``, ``"llava-v1.5-7b"`` -> ``"llava_v1"``,
        ``"vicuna-7b"`` -> ``"vicuna_v1"``.
    """
    templates = conv_templates if available is None else available
    name = model_name.lower()
    if "llava" in name:
        return _llava_template(name, templates)
    # Upstream tests these two against the name as given, not lower-cased.
    if "mpt" in model_name and "mpt_text" in templates:
        return "mpt_text"
    if "llama-2" in model_name:
        return "llama_2"
    return "vicuna_v1"


def _llava_template(name: str, templates: Container[str]) -> str:
    """The ``"llava" in name`` half of :func:`web_template_name` (``name`` lower-cased)."""
    if "llama-2" in name:
        return "llava_llama_2"
    if "mistral" in name or "mixtral" in name:
        if "orca" in name and "mistral_orca" in templates:
            return "mistral_orca"
        if "hermes" in name:
            return "chatml_direct"
        return "mistral_instruct"
    if "llava-v1.6-34b" in name:
        return "chatml_direct"
    pretrained_only = "plain" in name and "finetune" not in name
    if "v1" in name:
        return "v1_mmtag" if "mmtag" in name or pretrained_only else "llava_v1"
    if "mpt" in name:
        return "mpt"
    return "v0_mmtag" if "mmtag" in name or pretrained_only else "llava_v0"


def stop_string(conv: Conversation) -> str:
    """The text that ends an assistant turn in ``conv``'s template; ``""`` when the template has none.

    ``sep`` for the SINGLE and MPT styles, ``sep2`` for TWO, LLAMA_2 and PLAIN (upstream web demo's rule; its
    terminal chat used ``sep`` for LLAMA_2, which is ``""`` for ``mistral_instruct``).
    """
    if conv.sep_style in (SeparatorStyle.SINGLE, SeparatorStyle.MPT):
        return conv.sep or ""
    return conv.sep2 or ""
