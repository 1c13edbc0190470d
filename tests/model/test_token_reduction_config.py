"""``llava.model.token_reduction``: one place decides the mode; flag > config > checkpoint name > default."""

from __future__ import annotations

import argparse

import pytest

from llava.model.token_reduction import (
    TOKEN_REDUCTION_MODES,
    TokenReduction,
    add_token_reduction_args,
    mode_from_checkpoint_name,
    resolve_token_reduction,
    validate_budget,
    validate_mode,
)


def resolved(**kwargs) -> tuple:
    r = resolve_token_reduction(**kwargs)
    return r.mode, r.budget, r.source


def test_default():
    assert resolved() == ("prumerge", None, "default")
    assert resolved(checkpoint_name="liuhaotian/llava-v1.5-7b") == ("prumerge", None, "default")


def test_precedence_flag_over_config_over_name_over_default():
    name = "llava-v1.5-7b-prumerge-plus"
    assert resolved(checkpoint_name=name) == ("prumerge+", None, "checkpoint name")
    assert resolved(config_mode="none", checkpoint_name=name) == ("none", None, "config")
    assert resolved(flag_mode="prumerge", config_mode="none", checkpoint_name=name) == ("prumerge", None, "flag")
    assert resolved(flag_mode="none", config_mode="prumerge+") == ("none", None, "flag")


def test_budget_precedence_is_independent_of_the_mode():
    assert resolved(flag_budget=10, config_budget=20) == ("prumerge", 10, "default")
    assert resolved(config_budget=20, flag_mode="prumerge+") == ("prumerge+", 20, "flag")
    assert resolved(flag_budget="64", config_mode="none") == ("none", 64, "config")


@pytest.mark.parametrize(("name", "mode"), [
    ("llava-v1.5-7b-prumerge-plus", "prumerge+"),
    ("LLaVA-v1.5-7B-PruMerge_Plus-lora", "prumerge+"),
    ("llava-v1.5-7b-prumerge", None),
    ("llava-v1.5-7b", None),
    ("", None),
    (None, None),
])
def test_checkpoint_name_rule(name, mode):
    assert mode_from_checkpoint_name(name) == mode


@pytest.mark.parametrize(("given", "expected"), [
    ("none", "none"), ("PruMerge", "prumerge"), (" prumerge+ ", "prumerge+"), ("prumerge_plus", "prumerge+"),
    ("prumerge-plus", "prumerge+"),
])
def test_validate_mode_normalises(given, expected):
    assert validate_mode(given) == expected


def test_unknown_mode_lists_the_valid_modes():
    with pytest.raises(ValueError) as info:
        validate_mode("tome", "config key mm_token_reduction")
    assert str(info.value) == (
        "unknown config key mm_token_reduction 'tome'; valid modes are 'none', 'prumerge', 'prumerge+'"
    )
    with pytest.raises(ValueError, match=r"unknown --token-reduction 'fast'; valid modes are"):
        resolve_token_reduction(flag_mode="fast")
    with pytest.raises(ValueError, match=r"unknown config key mm_token_reduction 'Prumerge2'"):
        resolve_token_reduction(config_mode="Prumerge2")


@pytest.mark.parametrize(("given", "expected"), [(None, None), ("", None), ("none", None), ("null", None),
                                                 (1, 1), ("32", 32), (576, 576)])
def test_budget_validation_accepts(given, expected):
    assert validate_budget(given) == expected


@pytest.mark.parametrize("bad", [0, -3, "abc", 2.5j, True, "0"])
def test_budget_validation_rejects(bad):
    with pytest.raises(ValueError, match=r"token budget must be a positive integer or null, got"):
        validate_budget(bad)


def test_bad_config_budget_names_the_key():
    with pytest.raises(ValueError, match=r"config key mm_token_budget must be a positive integer or null, got -1"):
        resolve_token_reduction(config_budget=-1)


def test_token_reduction_properties():
    assert set(TOKEN_REDUCTION_MODES) == {"none", "prumerge", "prumerge+"}
    assert (TokenReduction("none").enabled, TokenReduction("none").plus) == (False, False)
    assert (TokenReduction("prumerge").enabled, TokenReduction("prumerge").plus) == (True, False)
    assert (TokenReduction("prumerge+").enabled, TokenReduction("prumerge+").plus) == (True, True)
    assert TokenReduction("prumerge+", 64, "flag").describe() == "token reduction: prumerge+ (budget 64, from flag)"
    assert TokenReduction("prumerge").describe() == "token reduction: prumerge (adaptive, from default)"
    assert TokenReduction("none", None, "config").describe() == (
        "token reduction: none (all visual tokens, from config)"
    )


def test_command_line_flags(capsys):
    parser = add_token_reduction_args(argparse.ArgumentParser())
    args = parser.parse_args([])
    assert (args.token_reduction, args.token_budget) == (None, None)
    args = parser.parse_args(["--token-reduction", "PruMerge-Plus", "--token-budget", "144"])
    assert (args.token_reduction, args.token_budget) == ("prumerge+", 144)
    assert resolved(flag_mode=args.token_reduction, flag_budget=args.token_budget, config_mode="none") == (
        "prumerge+", 144, "flag"
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["--token-reduction", "half"])
    assert "unknown --token-reduction 'half'; valid modes are 'none', 'prumerge', 'prumerge+'" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["--token-budget", "-2"])
    assert "--token-budget must be a positive integer or null, got '-2'" in capsys.readouterr().err
