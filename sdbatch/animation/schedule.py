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

import bisect
import math
import numbers
import re
from dataclasses import dataclass

from .expression import ScheduleError, _compile_expression, _EvalFailure, _Fn, _short

__all__ = [
    "ScheduleError",
    "as_schedule_text",
    "evaluate_schedule",
    "validate_schedule",
]

#: Largest accepted keyframe index.
MAX_FRAME = 10**9

_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_KEY_START_RE = re.compile(r"([0-9]+)\s*:\s*\(")


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
