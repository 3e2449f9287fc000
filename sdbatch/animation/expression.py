"""The safe arithmetic of schedule values: a whitelist AST compiler for expressions in ``t`` (never ``eval``)."""

from __future__ import annotations

import ast
import math
from collections.abc import Callable

#: Largest accepted ``|exponent|`` in ``a ** b`` (the result must also be finite).
MAX_EXPONENT = 1000.0
#: Longest accepted expression inside one keyframe, in characters.
MAX_EXPRESSION_CHARS = 1000
#: Deepest accepted nesting of the expression tree.
MAX_EXPRESSION_DEPTH = 64

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


def _short(source: str) -> str:
    return source if len(source) <= 60 else source[:57] + "..."
