"""Tests for sdbatch.animation.schedule (Deforum keyframe schedules, safe evaluator)."""

from __future__ import annotations

import ast
import math
import time
from pathlib import Path

import numpy as np
import pytest

from sdbatch.animation import ScheduleError, as_schedule_text, evaluate_schedule, validate_schedule
from sdbatch.animation import schedule as schedule_module

# ---------------------------------------------------------------------------
# semantics
# ---------------------------------------------------------------------------


def test_brief_example_expression_keyframe() -> None:
    # 0..4 interpolate from 0 towards the expression's value at its key (t=5 -> 10),
    # 5..7 evaluate t*2, 8.. hold the numeric 0.
    assert evaluate_schedule("0:(0), 5:(t*2), 8:(0)", 12) == [0, 2, 4, 6, 8, 10, 12, 14, 0, 0, 0, 0]


def test_brief_example_first_key_not_at_zero() -> None:
    assert evaluate_schedule("5:(1.0), 9:(3.0)", 11) == [1, 1, 1, 1, 1, 1, 1.5, 2, 2.5, 3, 3]


def test_deforum_default_zoom() -> None:
    assert evaluate_schedule("0: (1.04)", 5) == [1.04] * 5


def test_deforum_linear_zoom() -> None:
    values = evaluate_schedule("0:(1.0), 30:(1.05)", 31)
    assert values[0] == 1.0
    assert values[30] == 1.05
    assert values[15] == pytest.approx(1.025, abs=1e-15)
    assert values == pytest.approx([1.0 + 0.05 * i / 30 for i in range(31)], abs=1e-15)


def test_deforum_sine_example() -> None:
    text = "0:(0), 30:(10*sin(2*3.14*t/30))"
    values = evaluate_schedule(text, 60)

    def wave(t: int) -> float:
        return 10 * math.sin(2 * 3.14 * t / 30)

    at_key = wave(30)  # the value the numeric key 0 interpolates towards
    assert values[:30] == pytest.approx([at_key * i / 30 for i in range(30)], abs=1e-12)
    assert values[30:] == pytest.approx([wave(t) for t in range(30, 60)], abs=1e-12)


def test_spaces_everywhere() -> None:
    assert evaluate_schedule("  0 : ( 1.0 ) ,  4 :(  3.0  ) ", 5) == [1.0, 1.5, 2.0, 2.5, 3.0]
    assert evaluate_schedule("0:(0),2:(2)", 3) == [0.0, 1.0, 2.0]
    assert evaluate_schedule("0:(1),\n 2:(3)\n", 3) == [1.0, 2.0, 3.0]


def test_negative_and_signed_numbers() -> None:
    assert evaluate_schedule("0:(-1.5), 2:(1.5)", 4) == [-1.5, 0.0, 1.5, 1.5]
    assert evaluate_schedule("0:(+2), 2:(-.5)", 3) == [2.0, 0.75, -0.5]
    assert evaluate_schedule("0:(1e-3)", 2) == [0.001, 0.001]


def test_numeric_keyframes_interpolate_expressions_hold() -> None:
    # A constant *expression* is evaluated per frame (step), a number is interpolated (ramp).
    assert evaluate_schedule("0:(2*1), 4:(6)", 5) == [2.0, 2.0, 2.0, 2.0, 6.0]
    assert evaluate_schedule("0:(2), 4:(6)", 5) == [2.0, 3.0, 4.0, 5.0, 6.0]


def test_t_is_the_frame_index() -> None:
    assert evaluate_schedule("0:(t)", 5) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert evaluate_schedule("3:(t*t)", 6) == [9.0, 9.0, 9.0, 9.0, 16.0, 25.0]


def test_expression_then_numeric_then_expression() -> None:
    values = evaluate_schedule("0:(t), 3:(10), 6:(t-6)", 9)
    # 0..2 -> t; 3..5 ramp from 10 towards (t-6 at t=6) = 0; 6.. -> t-6
    assert values == pytest.approx([0, 1, 2, 10, 10 * 2 / 3, 10 / 3, 0, 1, 2], abs=1e-12)


def test_keys_out_of_order_are_sorted_and_last_duplicate_wins() -> None:
    assert evaluate_schedule("4:(4), 0:(0)", 5) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert evaluate_schedule("0:(1), 0:(3)", 2) == [3.0, 3.0]


def test_trailing_comma_is_accepted() -> None:
    assert evaluate_schedule("0:(1), ", 2) == [1.0, 1.0]


def test_key_beyond_the_end_still_steers_interpolation() -> None:
    # A shorter render is an exact prefix of a longer one.
    long = evaluate_schedule("0:(0), 100:(10)", 101)
    short = evaluate_schedule("0:(0), 100:(10)", 10)
    assert short == long[:10]
    assert short[9] == pytest.approx(0.9)
    # an expression key after the end is evaluated at its own frame for the ramp
    assert evaluate_schedule("0:(0), 10:(t*2)", 3) == pytest.approx([0.0, 2.0, 4.0])


def test_before_the_first_key_the_first_value_holds() -> None:
    assert evaluate_schedule("3:(t+1)", 5) == [4.0, 4.0, 4.0, 4.0, 5.0]
    assert evaluate_schedule("2:(7)", 4) == [7.0, 7.0, 7.0, 7.0]


def test_constants_and_functions() -> None:
    (value,) = evaluate_schedule("0:(pi + e)", 1)
    assert value == math.pi + math.e
    text = (
        "0:(sin(0) + cos(0) + tan(0) + asin(1) + acos(1) + atan(1) + sqrt(16) + abs(-2)"
        " + exp(0) + log(e) + floor(2.7) + ceil(2.1) + min(3, 1, 2) + max(t, 5) + 7 % 4 + 2**3 - 8/4)"
    )
    expected = 0 + 1 + 0 + math.pi / 2 + 0 + math.pi / 4 + 4 + 2 + 1 + 1 + 2 + 3 + 1 + 5 + 3 + 8 - 2
    assert evaluate_schedule(text, 1) == [pytest.approx(expected, abs=1e-12)]
    # numexpr spellings found in Deforum settings files
    assert evaluate_schedule("0:(arcsin(1) - arccos(0) + arctan(0))", 1) == [pytest.approx(0.0, abs=1e-12)]


def test_unary_operators_and_parentheses() -> None:
    assert evaluate_schedule("0:(-(t - 2) * +3)", 3) == [6.0, 3.0, -0.0]
    assert evaluate_schedule("0:(2**-1)", 1) == [0.5]


def test_plain_numbers_are_constant_schedules() -> None:
    assert evaluate_schedule("0.5", 3) == [0.5, 0.5, 0.5]
    assert evaluate_schedule(" -2 ", 2) == [-2.0, -2.0]
    assert evaluate_schedule(3, 2) == [3.0, 3.0]
    assert evaluate_schedule(0.25, 1) == [0.25]
    assert evaluate_schedule(np.float64(1.5), 2) == [1.5, 1.5]


def test_zero_frames_and_result_types() -> None:
    assert evaluate_schedule("0:(1)", 0) == []
    values = evaluate_schedule("0:(1), 2:(t)", 4)
    assert all(type(v) is float for v in values)


@pytest.mark.parametrize("frames", [-1, 1.5, "3", True, None])
def test_bad_frame_counts(frames: object) -> None:
    with pytest.raises(ScheduleError):
        evaluate_schedule("0:(1)", frames)  # type: ignore[arg-type]


def test_long_schedule_is_fast() -> None:
    start = time.perf_counter()
    values = evaluate_schedule("0:(1.0), 500:(0.5*sin(2*pi*t/48) + 1), 9000:(2)", 10_000)
    assert time.perf_counter() - start < 2.0
    assert len(values) == 10_000
    assert values[-1] == 2.0


# ---------------------------------------------------------------------------
# syntax errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("5:(t*", "bad keyframe '5:(t*'"),
        ("0:(1) 2:(3)", "bad keyframe '0:(1) 2:(3)'"),
        ("abc", "bad keyframe 'abc'"),
        ("0:1", "bad keyframe '0:1'"),
        ("-1:(2)", "bad keyframe '-1:(2)'"),
        ("0:(1),,1:(2)", "bad keyframe ',1:(2)'"),
        ("0:(1), x", "bad keyframe 'x'"),
        ("0:()", "empty value"),
        ("0:(t))", "bad keyframe"),
        ("0:((t)", "unbalanced parentheses"),
        ("", "empty schedule"),
        ("   ", "empty schedule"),
        ("0:(t*)", "invalid expression 't*'"),
        ("0:(1 2)", "invalid expression '1 2'"),
    ],
)
def test_malformed_schedules(text: str, fragment: str) -> None:
    with pytest.raises(ScheduleError) as info:
        validate_schedule(text)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message
    with pytest.raises(ScheduleError):
        evaluate_schedule(text, 3)


def test_schedule_error_is_a_value_error_with_one_line() -> None:
    assert issubclass(ScheduleError, ValueError)
    with pytest.raises(ValueError) as info:
        validate_schedule("0:(t\n*)")
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------
# the safe evaluator refuses everything but arithmetic
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("__import__('os').system('x')", "attribute access is not allowed"),
        ("__import__('os')", "function '__import__' is not allowed"),
        ("t.__class__", "attribute access is not allowed"),
        ("t.__class__.__bases__[0].__subclasses__()", "is not allowed"),
        ("'a'*9", "string constants are not allowed"),
        ("b'a'", "string constants are not allowed"),
        ("lambda: 1", "lambda is not allowed"),
        ("(lambda t: t)(1)", "lambda is not allowed"),
        ("os", "name 'os' is not allowed"),
        ("x + 1", "name 'x' is not allowed"),
        ("__builtins__", "name '__builtins__' is not allowed"),
        ("eval('1')", "function 'eval' is not allowed"),
        ("exec('1')", "function 'exec' is not allowed"),
        ("getattr(t, 'real')", "function 'getattr' is not allowed"),
        ("open('/etc/passwd')", "function 'open' is not allowed"),
        ("t[0]", "subscripting is not allowed"),
        ("[1, 2]", "list is not allowed"),
        ("(1, 2)", "tuple is not allowed"),
        ("{1: 2}", "dict is not allowed"),
        ("[i for i in (1,)]", "comprehension is not allowed"),
        ("f'{t}'", "f-string is not allowed"),
        ("(y := 1)", "assignment expression is not allowed"),
        ("t if t else 1", "conditional expression is not allowed"),
        ("t > 1", "comparison is not allowed"),
        ("t and 1", "boolean operator is not allowed"),
        ("not t", "is not allowed"),
        ("~1", "is not allowed"),
        ("t // 2", "is not allowed"),
        ("t << 2", "is not allowed"),
        ("t @ t", "is not allowed"),
        ("True", "bool constants are not allowed"),
        ("None", "constants are not allowed"),
        ("1j", "complex constants are not allowed"),
        ("...", "constants are not allowed"),
        ("sin(x=1)", "keyword arguments are not allowed"),
        ("sin(*[1])", "is not allowed"),
        ("max(t)", "at least two arguments"),
        ("sin(1, 2)", "takes exactly 1 argument"),
        ("sin.__call__(1)", "attribute access is not allowed"),
        ("sin", "name 'sin' is not allowed"),
    ],
)
def test_refused_expressions(expression: str, reason: str) -> None:
    with pytest.raises(ScheduleError) as info:
        validate_schedule(f"0:({expression})")
    assert reason in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(ScheduleError):
        evaluate_schedule(f"0:(1), 5:({expression})", 10)


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("9**9**9", "exponent"),
        ("2**10000", "exponent"),
        ("t**1001", "exponent"),
        ("10**400", "too large"),
        ("exp(1000)", "exp() failed"),
        ("1e308*10", "not a finite real number"),
        ("(-8)**(1/3)", "not a finite real number"),
        ("sqrt(-1)", "sqrt() failed"),
        ("log(0)", "log() failed"),
        ("1/0", "division by zero"),
        ("1 % 0", "division by zero"),
        ("0**-1", "division by zero"),
        ("1" + "0" * 400, "not finite"),
        ("1e999 - 1", "not finite"),
    ],
)
def test_arithmetic_blowups_are_schedule_errors(expression: str, reason: str) -> None:
    start = time.perf_counter()
    with pytest.raises(ScheduleError) as info:
        validate_schedule(f"0:({expression})")
    assert time.perf_counter() - start < 1.0
    assert reason in str(info.value)


def test_numeric_keyframe_overflow() -> None:
    with pytest.raises(ScheduleError, match="not finite"):
        validate_schedule("0:(1e999)")


def test_evaluation_error_reports_the_frame() -> None:
    validate_schedule("0:(1/(t-3))")  # fine at its own key (t=0)
    with pytest.raises(ScheduleError, match=r"at t=3: division by zero"):
        evaluate_schedule("0:(1/(t-3))", 5)


def test_validate_evaluates_each_expression_at_its_key() -> None:
    with pytest.raises(ScheduleError, match=r"cannot evaluate 'sqrt\(t-5\)' at t=0"):
        validate_schedule("0:(sqrt(t-5))")
    assert validate_schedule("5:(sqrt(t-5))") is None


def test_oversized_and_deeply_nested_expressions() -> None:
    with pytest.raises(ScheduleError, match="longer than"):
        validate_schedule("0:(" + "+".join(["t"] * 600) + ")")
    with pytest.raises(ScheduleError, match="nested deeper"):
        validate_schedule("0:(" + "-" * 200 + "1)")
    with pytest.raises(ScheduleError):
        validate_schedule("0:(" + "(" * 300 + "1" + ")" * 300 + ")")


def test_no_eval_exec_or_numexpr_in_the_module() -> None:
    tree = ast.parse(Path(schedule_module.__file__).read_text())
    called = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert not called & {"eval", "exec", "compile", "__import__", "getattr"}
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "numexpr" not in imported and "pandas" not in imported


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def test_validate_schedule_accepts_good_schedules() -> None:
    for text in ["0:(1.0), 30:(1.05)", "0: (1.04)", "0:(0), 30:(10*sin(2*3.14*t/30))", "0.5", 2, 0.5]:
        assert validate_schedule(text) is None  # type: ignore[arg-type]


def test_as_schedule_text() -> None:
    assert as_schedule_text(0.5) == "0:(0.5)"
    assert as_schedule_text(2) == "0:(2)"
    assert as_schedule_text(np.float64(1.25)) == "0:(1.25)"
    assert as_schedule_text(np.int64(3)) == "0:(3)"
    assert as_schedule_text(1e-07) == "0:(1e-07)"
    assert as_schedule_text(" 0.5 ") == "0:(0.5)"
    assert as_schedule_text(" 0:(1), 10:(t/10) ") == "0:(1), 10:(t/10)"
    for value in [0.5, 2, -3.75, 1e-07, "0:(1), 10:(t/10)"]:
        text = as_schedule_text(value)  # type: ignore[arg-type]
        assert evaluate_schedule(text, 3) == evaluate_schedule(value, 3)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [True, float("nan"), float("inf"), None, [1.0], "0:(os)"])
def test_as_schedule_text_refuses(value: object) -> None:
    with pytest.raises(ScheduleError):
        as_schedule_text(value)  # type: ignore[arg-type]
