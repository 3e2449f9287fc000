"""Deforum-style keyframe schedules, evaluated safely.

A schedule is a comma-separated list of ``frame:(value)`` keyframes, exactly as
Deforum writes them, for example ``"0:(1.0), 30:(1.05)"`` or
``"0:(0), 30:(10*sin(2*pi*t/30))"``.  A value is either a plain number or an
arithmetic expression in ``t`` (the frame index).

Semantics (identical to Deforum's ``get_inbetweens`` for schedules whose keys
lie inside the animation):

* a **numeric** keyframe is interpolated linearly towards the value of the next
  keyframe *at that keyframe's frame* (an expression keyframe is evaluated at
  ``t = its frame`` for this purpose);
* an **expression** keyframe is evaluated at every frame from its key until the
  next key (or the end of the animation);
* before the first key the first key's value holds; after a numeric last key
  its value holds.

Deliberate differences from Deforum: keys beyond the last frame still steer the
interpolation (so a shorter render is an exact prefix of a longer one, where
Deforum would silently drop such keys), a number with surrounding spaces or an
exponent (``"( 1.0 )"``, ``"1e-3"``) counts as numeric, and expressions are
parsed by a whitelist AST walker instead of ``numexpr``. Frames are 0-based.

Expressions may use numbers, ``t``, ``pi``, ``e``, ``+ - * / ** %``, unary
``+``/``-``, parentheses and the functions ``sin cos tan asin acos atan sqrt
abs exp log floor ceil min max`` (plus ``arcsin arccos arctan``, the numexpr
spellings used in many Deforum settings files).  Anything else -- attributes,
subscripts, strings, lambdas, keywords, other names -- is refused with a
:class:`ScheduleError`.  Python's ``eval`` is never used.

>>> evaluate_schedule("0:(0), 5:(t*2), 8:(0)", 12)
[0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 0.0, 0.0, 0.0, 0.0]
>>> evaluate_schedule("5:(1.0), 9:(3.0)", 11)
[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.5, 2.0, 2.5, 3.0, 3.0]
"""

from __future__ import annotations

import ast
import bisect
import math
import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "ScheduleError",
    "as_schedule_text",
    "evaluate_schedule",
    "validate_schedule",
]

#: Largest accepted ``|exponent|`` in ``a ** b`` (the result must also be finite).
MAX_EXPONENT = 1000.0
#: Longest accepted expression inside one keyframe, in characters.
MAX_EXPRESSION_CHARS = 1000
#: Deepest accepted nesting of the expression tree.
MAX_EXPRESSION_DEPTH = 64
#: Largest accepted keyframe index.
MAX_FRAME = 10**9

_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_KEY_START_RE = re.compile(r"([0-9]+)\s*:\s*\(")

_Fn = Callable[[float], float]

_FUNCTIONS: dict[str, tuple[Callable[..., float], int]] = {
    # name: (implementation, arity); arity -1 means "two or more"
    "sin": (math.sin, 1),
    "cos": (math.cos, 1),
    "tan": (math.tan, 1),
    "asin": (math.asin, 1),
    "acos": (math.acos, 1),
    "atan": (math.atan, 1),
    "arcsin": (math.asin, 1),
    "arccos": (math.acos, 1),
    "arctan": (math.atan, 1),
    "sqrt": (math.sqrt, 1),
    "abs": (abs, 1),
    "exp": (math.exp, 1),
    "log": (math.log, 1),
    "floor": (math.floor, 1),
    "ceil": (math.ceil, 1),
    "min": (min, -1),
    "max": (max, -1),
}
_CONSTANTS = {"pi": math.pi, "e": math.e}

_NODE_NAMES = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscripting",
    ast.Lambda: "lambda",
    ast.Compare: "comparison",
    ast.BoolOp: "boolean operator",
    ast.IfExp: "conditional expression",
    ast.List: "list",
    ast.Tuple: "tuple",
    ast.Dict: "dict",
    ast.Set: "set",
    ast.ListComp: "comprehension",
    ast.SetComp: "comprehension",
    ast.DictComp: "comprehension",
    ast.GeneratorExp: "comprehension",
    ast.JoinedStr: "f-string",
    ast.NamedExpr: "assignment expression",
    ast.Starred: "starred argument",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Slice: "slice",
}

_BINARY_OPS: dict[type, str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.Pow: "**",
    ast.Mod: "%",
}


class ScheduleError(ValueError):
    """A schedule string is malformed, uses forbidden syntax, or cannot be evaluated.

    The message is a single line, e.g. ``bad keyframe '5:(t*'`` or
    ``name 'os' is not allowed in a schedule expression``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class _EvalFailure(Exception):
    """Internal: an arithmetic problem while evaluating a compiled expression."""


@dataclass(frozen=True)
class _Keyframe:
    frame: int
    source: str
    number: float | None  # set for numeric keyframes
    fn: _Fn | None  # set for expression keyframes

    def at(self, t: float) -> float:
        if self.fn is None:
            assert self.number is not None
            return self.number
        try:
            value = self.fn(float(t))
        except _EvalFailure as exc:
            raise ScheduleError(f"cannot evaluate '{self.source}' at t={t:g}: {exc}") from None
        return value


# ---------------------------------------------------------------------------
# expression compiler: validated AST -> nested closures (no eval)
# ---------------------------------------------------------------------------


def _finite(value: float, what: str) -> float:
    if isinstance(value, complex) or not math.isfinite(value):
        raise _EvalFailure(f"{what} is not a finite real number")
    return float(value)


def _checked_binary(op: str, left: float, right: float) -> float:
    try:
        if op == "+":
            result = left + right
        elif op == "-":
            result = left - right
        elif op == "*":
            result = left * right
        elif op == "/":
            result = left / right
        elif op == "%":
            result = left % right
        else:  # "**"
            if abs(right) > MAX_EXPONENT:
                raise _EvalFailure(f"exponent {right:g} is larger than {MAX_EXPONENT:g} in magnitude")
            result = left**right
    except ZeroDivisionError:
        raise _EvalFailure(f"division by zero in '{op}'") from None
    except OverflowError:
        raise _EvalFailure(f"result of '{op}' is too large") from None
    return _finite(result, f"result of '{op}'")


def _checked_call(name: str, impl: Callable[..., float], args: list[float]) -> float:
    try:
        result = impl(*args)
    except (ValueError, OverflowError) as exc:
        raise _EvalFailure(f"{name}() failed: {exc}") from None
    return _finite(result, f"result of {name}()")


def _compile(node: ast.AST, depth: int) -> _Fn:
    if depth > MAX_EXPRESSION_DEPTH:
        raise ScheduleError(f"expression is nested deeper than {MAX_EXPRESSION_DEPTH} levels")
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            kind = "string" if isinstance(value, (str, bytes)) else type(value).__name__
            raise ScheduleError(f"{kind} constants are not allowed in a schedule expression")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise ScheduleError(f"constant '{_short(str(value))}' is not finite")
        return lambda t: number
    if isinstance(node, ast.Name):
        if node.id == "t":
            return lambda t: t
        if node.id in _CONSTANTS:
            constant = _CONSTANTS[node.id]
            return lambda t: constant
        raise ScheduleError(f"name '{node.id}' is not allowed in a schedule expression")
    if isinstance(node, ast.UnaryOp):
        operand = _compile(node.operand, depth + 1)
        if isinstance(node.op, ast.USub):
            return lambda t: -operand(t)
        if isinstance(node.op, ast.UAdd):
            return operand
        raise ScheduleError(f"operator '{ast.unparse(node)}' is not allowed in a schedule expression")
    if isinstance(node, ast.BinOp):
        op = _BINARY_OPS.get(type(node.op))
        if op is None:
            raise ScheduleError(
                f"operator in '{ast.unparse(node)}' is not allowed in a schedule expression "
                "(allowed: + - * / ** %)"
            )
        left = _compile(node.left, depth + 1)
        right = _compile(node.right, depth + 1)
        return lambda t: _checked_binary(op, left(t), right(t))
    if isinstance(node, ast.Call):
        return _compile_call(node, depth)
    kind = _NODE_NAMES.get(type(node), f"'{type(node).__name__}' syntax")
    raise ScheduleError(f"{kind} is not allowed in a schedule expression")


def _compile_call(node: ast.Call, depth: int) -> _Fn:
    if not isinstance(node.func, ast.Name):
        kind = _NODE_NAMES.get(type(node.func), "calling this")
        raise ScheduleError(f"{kind} is not allowed in a schedule expression")
    name = node.func.id
    if name not in _FUNCTIONS:
        raise ScheduleError(f"function '{name}' is not allowed in a schedule expression")
    if node.keywords:
        raise ScheduleError(f"keyword arguments are not allowed in a schedule expression ({name})")
    impl, arity = _FUNCTIONS[name]
    if arity == -1 and len(node.args) < 2:
        raise ScheduleError(f"{name}() needs at least two arguments")
    if arity >= 0 and len(node.args) != arity:
        raise ScheduleError(f"{name}() takes exactly {arity} argument, got {len(node.args)}")
    args = [_compile(arg, depth + 1) for arg in node.args]
    return lambda t: _checked_call(name, impl, [arg(t) for arg in args])


def _compile_expression(source: str) -> _Fn:
    if len(source) > MAX_EXPRESSION_CHARS:
        raise ScheduleError(f"expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise ScheduleError(f"invalid expression '{_short(source.strip())}': {exc.msg}") from None
    except (RecursionError, MemoryError, ValueError):
        raise ScheduleError(f"invalid expression '{_short(source.strip())}'") from None
    return _compile(tree.body, 0)


# ---------------------------------------------------------------------------
# keyframe string parser
# ---------------------------------------------------------------------------


def _fragment(text: str, start: int) -> str:
    """The keyframe text starting at ``start`` up to the next top-level comma."""
    depth = 0
    end = start
    while end < len(text):
        char = text[end]
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth <= 0:
            break
        end += 1
    fragment = text[start:end].strip() or text[start:].strip()
    return fragment if len(fragment) <= 60 else fragment[:57] + "..."


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _parse(text: str) -> list[_Keyframe]:
    """Parse ``frame:(value), ...`` into keyframes sorted by frame (last duplicate wins)."""
    keyframes: dict[int, _Keyframe] = {}
    pos = _skip_space(text, 0)
    if pos == len(text):
        raise ScheduleError("empty schedule")
    while pos < len(text):
        start = pos
        match = _KEY_START_RE.match(text, pos)
        if match is None:
            raise ScheduleError(f"bad keyframe '{_fragment(text, start)}' (expected 'frame:(value)')")
        frame = int(match.group(1))
        if frame > MAX_FRAME:
            raise ScheduleError(f"keyframe index {frame} is larger than {MAX_FRAME}")
        depth = 1
        pos = match.end()
        while pos < len(text) and depth:
            depth += {"(": 1, ")": -1}.get(text[pos], 0)
            pos += 1
        if depth:
            raise ScheduleError(f"bad keyframe '{_fragment(text, start)}' (unbalanced parentheses)")
        source = text[match.end() : pos - 1].strip()
        if not source:
            raise ScheduleError(f"bad keyframe '{_fragment(text, start)}' (empty value)")
        keyframes[frame] = _make_keyframe(frame, source)
        pos = _skip_space(text, pos)
        if pos < len(text):
            if text[pos] != ",":
                raise ScheduleError(
                    f"bad keyframe '{_fragment(text, start)}' (expected ',' after the closing parenthesis)"
                )
            pos = _skip_space(text, pos + 1)
    return [keyframes[frame] for frame in sorted(keyframes)]


def _make_keyframe(frame: int, source: str) -> _Keyframe:
    if _NUMBER_RE.fullmatch(source):
        number = float(source)
        if not math.isfinite(number):
            raise ScheduleError(f"keyframe {frame}: value {_short(source)} is not finite")
        return _Keyframe(frame, source, number, None)
    try:
        fn = _compile_expression(source)
    except ScheduleError as exc:
        raise ScheduleError(f"{exc} (keyframe {frame}: '{_short(source)}')") from None
    return _Keyframe(frame, source, None, fn)


def _short(source: str) -> str:
    return source if len(source) <= 60 else source[:57] + "..."


def _keyframes_of(text: str | int | float) -> list[_Keyframe]:
    if not isinstance(text, str):
        return _parse(as_schedule_text(text))
    stripped = text.strip()
    if _NUMBER_RE.fullmatch(stripped):
        return [_make_keyframe(0, stripped)]
    return _parse(text)


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------


def as_schedule_text(value: float | int | str) -> str:
    """Normalise a constant or a schedule string to schedule text.

    Numbers become a single keyframe at frame 0; strings are validated and
    returned stripped (a bare number string is also turned into a keyframe).

    >>> as_schedule_text(0.5)
    '0:(0.5)'
    >>> as_schedule_text(" 0:(1), 10:(t/10) ")
    '0:(1), 10:(t/10)'
    """
    if isinstance(value, bool):
        raise ScheduleError("a schedule must be a string or a number, got bool")
    if isinstance(value, numbers.Integral):
        return f"0:({int(value)})"
    if isinstance(value, numbers.Real):
        number = float(value)
        if not math.isfinite(number):
            raise ScheduleError(f"schedule value {number} is not finite")
        return f"0:({number!r})"
    if isinstance(value, str):
        stripped = value.strip()
        if _NUMBER_RE.fullmatch(stripped):
            _make_keyframe(0, stripped)
            return f"0:({stripped})"
        validate_schedule(stripped)
        return stripped
    raise ScheduleError(f"a schedule must be a string or a number, got {type(value).__name__}")


def validate_schedule(text: str | int | float) -> None:
    """Check a schedule's syntax and safety without a frame count.

    Every expression is also evaluated once at its own keyframe, which catches
    errors such as ``sqrt(t - 5)`` keyed at frame 0.  Raises
    :class:`ScheduleError`; returns ``None`` when the schedule is usable.

    >>> validate_schedule("0:(1.0), 30:(1.05)")
    >>> try:
    ...     validate_schedule("0:(os.system('x'))")
    ... except ScheduleError as exc:
    ...     print(exc)
    attribute access is not allowed in a schedule expression (keyframe 0: 'os.system('x')')
    """
    for key in _keyframes_of(text):
        key.at(key.frame)


def evaluate_schedule(text: str | int | float, frames: int) -> list[float]:
    """Evaluate a schedule at frames ``0 .. frames-1``.

    ``text`` is a Deforum keyframe string (``"0:(1.0), 30:(1.05)"``), a plain
    number string (``"0.5"``) or a number (constant schedule).

    >>> evaluate_schedule("0: (1.04)", 3)
    [1.04, 1.04, 1.04]
    >>> evaluate_schedule("0:(0), 4:(-1.5)", 5)
    [0.0, -0.375, -0.75, -1.125, -1.5]
    """
    if isinstance(frames, bool) or not isinstance(frames, int):
        raise ScheduleError(f"frames must be an int, got {type(frames).__name__}")
    if frames < 0:
        raise ScheduleError(f"frames must be >= 0, got {frames}")
    keys = _keyframes_of(text)
    at_key = [key.at(key.frame) for key in keys]
    starts = [key.frame for key in keys]
    values: list[float] = []
    for i in range(frames):
        index = bisect.bisect_right(starts, i) - 1
        if index < 0:  # before the first key: the first key's value holds
            values.append(at_key[0])
            continue
        key = keys[index]
        if key.fn is not None:
            values.append(at_key[index] if i == key.frame else key.at(i))
        elif index + 1 < len(keys):
            nxt = keys[index + 1]
            v0, v1 = at_key[index], at_key[index + 1]
            values.append(v0 + (v1 - v0) * (i - key.frame) / (nxt.frame - key.frame))
        else:
            values.append(at_key[index])
    return values
