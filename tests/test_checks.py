"""The shared argument checks: types refused with TypeError, ranges with ValueError."""

import math
import re

import numpy as np
import pytest

from effv2_lib._checks import check_choice, check_int, check_real


@pytest.mark.parametrize("check", [lambda v: check_int("n", v, 0), lambda v: check_real("x", v)])
@pytest.mark.parametrize("flag", [True, False])
def test_bool_is_refused_where_a_number_is_expected(check, flag):
    with pytest.raises(TypeError, match=f"got bool {flag}"):
        check(flag)


@pytest.mark.parametrize("bad", [2.0, "2", None])
def test_check_int_refuses_non_integers_with_type_error(bad):
    with pytest.raises(TypeError, match=f"n must be an int, got {type(bad).__name__}"):
        check_int("n", bad, 0)


def test_check_int_accepts_a_numpy_integer_as_a_plain_int():
    value = check_int("n", np.int64(7), 1)
    assert value == 7 and type(value) is int


def test_none_passes_only_when_optional():
    assert check_int("n", None, 1, optional=True) is None
    assert check_real("x", None, optional=True) is None
    with pytest.raises(TypeError, match="n must be an int, got NoneType None"):
        check_int("n", None, 1)
    with pytest.raises(TypeError, match="or None"):  # the message says None was allowed
        check_int("n", "3", 1, optional=True)


def test_check_real_returns_a_float_and_keeps_closed_bounds():
    value = check_real("x", 1, 0, 1)
    assert value == 1.0 and type(value) is float
    assert check_real("x", np.float32(0.5), 0, 1) == 0.5


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_check_real_refuses_nan_and_infinities_even_without_bounds(bad):
    with pytest.raises(ValueError, match=f"x must be a number in .*, got {bad!r}"):
        check_real("x", bad)


def test_range_messages_name_the_argument_the_expectation_and_the_value():
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        check_int("batch_size", 0, 1)
    with pytest.raises(ValueError, match=r"rate must be a number in \[0.0, 1.0\], got 1.5"):
        check_real("rate", 1.5, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"alpha must be >= 0 \(0 disables it\), got -0.5"):
        check_real("alpha", -0.5, 0.0, allowed=">= 0 (0 disables it)")


def test_check_choice_returns_a_known_value_and_lists_the_choices_otherwise():
    assert check_choice("rule", "paper", ("paper", "automl")) == "paper"
    with pytest.raises(ValueError, match="rule must be one of paper, automl, got 'timm'"):
        check_choice("rule", "timm", ("paper", "automl"))


@pytest.mark.parametrize("choices", [("paper", "automl"), dict.fromkeys(("paper", "automl"))])
@pytest.mark.parametrize("bad", [["paper"], {"rule": "paper"}])
def test_check_choice_refuses_an_unhashable_value_with_value_error(bad, choices):
    # `bad in choices` on a dict (or set) of choices would raise "unhashable type" instead
    with pytest.raises(ValueError, match=re.escape(f"rule must be one of paper, automl, got {bad!r}")):
        check_choice("rule", bad, choices)


def test_check_choice_refuses_bool_even_when_1_is_a_choice():
    assert check_choice("stride", 1, (1, 2)) == 1
    with pytest.raises(ValueError, match="stride must be one of 1, 2, got True"):
        check_choice("stride", True, (1, 2))
