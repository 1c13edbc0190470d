"""Tests for llava.conv_mode: upstream 1.2.2's two name -> template rules, branch by branch, and the stop strings."""

from __future__ import annotations

import logging

import pytest

from llava.conv_mode import choose_conv_mode, infer_conv_mode, stop_string, web_template_name
from llava.conversation import conv_templates

# --- the command-line rule (run_llava.py, cli.py) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("llava-v1.5-7b", "llava_v1"),
        ("llava-v1.5-13b-lora_checkpoint-500", "llava_v1"),
        ("llava-v1.6-vicuna-7b", "llava_v1"),
        ("llava-v1.6-mistral-7b", "mistral_instruct"),  # "mistral" is checked before "v1"
        ("llava-v1.6-34b", "chatml_direct"),  # "v1.6-34b" is checked before "v1"
        ("LLaVA-V1.6-34B", "chatml_direct"),  # lower-cased first
        ("llava-llama-2-13b-chat-lightning-preview", "llava_llama_2"),
        ("llava-llama-2-mistral-v1", "llava_llama_2"),  # "llama-2" wins over everything
        ("llava-mistral-v1.6-34b", "mistral_instruct"),  # "mistral" before "v1.6-34b"
        ("llava-v1-mpt-7b", "llava_v1"),  # "v1" before "mpt"
        ("llava-mpt-7b", "mpt"),
        ("llava-7b", "llava_v0"),
        ("vicuna-13b", "llava_v0"),
    ],
)
def test_infer_conv_mode(name, mode):
    assert infer_conv_mode(name) == mode
    assert mode in conv_templates


def test_choose_conv_mode_override_and_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="llava.conv_mode"):
        assert choose_conv_mode("llava-v1.5-7b", None) == "llava_v1"
        assert choose_conv_mode("llava-v1.5-7b", "") == "llava_v1"
        assert choose_conv_mode("llava-v1.5-7b", "llava_v1") == "llava_v1"
    assert caplog.records == []  # no warning when nothing is overridden
    with caplog.at_level(logging.WARNING, logger="llava.conv_mode"):
        assert choose_conv_mode("llava-v1.6-34b", "vicuna_v1") == "vicuna_v1"
    assert [r.getMessage() for r in caplog.records] == [
        "the auto inferred conversation mode is chatml_direct, while `--conv-mode` is vicuna_v1, using vicuna_v1"
    ]
    with pytest.raises(ValueError, match="unknown --conv-mode 'chatml'.*chatml_direct"):
        choose_conv_mode("llava-v1.6-34b", "chatml")


def test_entry_points_share_the_rule():
    from llava.eval import common, run_llava
    from llava.serve import cli

    assert common.infer_conv_mode is infer_conv_mode and common.choose_conv_mode is choose_conv_mode
    assert run_llava.choose_conv_mode is choose_conv_mode and cli.choose_conv_mode is choose_conv_mode


# --- the web demo's rule (gradio http_bot) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "template"),
    [
        # names with "llava"
        ("llava-llama-2-13b-chat", "llava_llama_2"),
        ("llava-v1.6-mistral-7b", "mistral_instruct"),
        ("llava-v1.6-Mixtral-8x7b", "mistral_instruct"),
        ("llava-v1.6-mistral-orca-7b", "mistral_instruct"),  # mistral_orca is not a template here: branch skipped
        ("llava-orca-hermes-mistral", "chatml_direct"),  # ... so "hermes" decides
        ("llava-nous-hermes-2-mixtral", "chatml_direct"),
        ("llava-v1.6-34b", "chatml_direct"),
        ("llava-v1.5-7b", "llava_v1"),
        ("llava-v1.5-7b-mmtag", "v1_mmtag"),
        ("llava-v1-plain-pretrain", "v1_mmtag"),
        ("llava-v1-plain-finetune", "llava_v1"),
        ("llava-mpt-7b", "mpt"),
        ("llava-13b", "llava_v0"),
        ("llava-13b-mmtag", "v0_mmtag"),
        ("llava-13b-plain", "v0_mmtag"),
        ("llava-13b-plain-finetune", "llava_v0"),
        ("LLaVA-V1.5-7B", "llava_v1"),  # the "llava" half looks at the lower-cased name
        # names without "llava": text-only chat models
        ("mpt-7b-chat", "vicuna_v1"),  # mpt_text is not a template here: branch skipped
        ("Llama-2-7b-chat", "vicuna_v1"),  # this half is case-sensitive, as upstream's
        ("llama-2-7b-chat", "llama_2"),
        ("vicuna-13b", "vicuna_v1"),
        ("broken-model", "vicuna_v1"),
    ],
)
def test_web_template_name(name, template):
    assert web_template_name(name) == template
    assert template in conv_templates


def test_web_template_name_uses_templates_that_exist():
    available = set(conv_templates) | {"mistral_orca", "mpt_text"}
    assert web_template_name("llava-v1.6-mistral-orca-7b", available) == "mistral_orca"
    assert web_template_name("llava-orca-hermes-mistral", available) == "mistral_orca"  # orca before hermes
    assert web_template_name("mpt-7b-chat", available) == "mpt_text"
    assert web_template_name("MPT-7b-chat", available) == "vicuna_v1"  # case-sensitive "mpt"
    assert web_template_name("llama-2-mpt", set(conv_templates)) == "llama_2"


def test_web_demo_uses_the_web_rule():
    from llava.serve import _gradio_chat as chat

    conv = chat.add_user_turn(chat.new_conversation(), "What?", None, "Default")
    assert chat.template_for_model(conv, "llava-v1.6-34b").get_prompt() == (
        "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\nWhat?<|im_end|><|im_start|>assistant\n"
    )
    assert chat.template_for_model(conv, "llava-v1.6-mistral-7b").get_prompt() == "[INST] What? [/INST]"
    assert chat.template_for_model(conv, "vicuna-7b").get_prompt().endswith("USER: What? ASSISTANT:")


# --- stop strings ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "stop"),
    [
        ("llava_v1", "</s>"),
        ("vicuna_v1", "</s>"),
        ("mistral_instruct", "</s>"),  # LLAMA_2 style: sep2 (its sep is "")
        ("llava_llama_2", "</s>"),
        ("chatml_direct", "<|im_end|>"),
        ("mpt", "<|im_end|>"),
        ("llava_v0", "###"),
        ("v0_mmtag", "###"),
        ("plain", ""),  # no sep2: no stop string
    ],
)
def test_stop_string(template, stop):
    assert stop_string(conv_templates[template]) == stop
