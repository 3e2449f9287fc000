"""AUTOMATIC1111's prompt attention syntax, parsed: pure Python, no torch (the planner reads it too).

``prompt_syntax: a1111`` (the default) reads a prompt as A1111 does (``modules/prompt_parser.py``,
``parse_prompt_attention``): ``(x)`` multiplies x's weight by 1.1, ``((x))`` by 1.21, ``(x:1.5)`` sets 1.5
(times any enclosing brackets), ``[x]`` divides by 1.1, ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are the literal
characters, an unclosed bracket weights everything after it, a stray closing one is text, and the word
``BREAK`` (upper case, on its own) ends the current 75-token chunk. :func:`parse_attention` returns the
prompt's segments (split at ``BREAK``), each a list of ``(text, weight)`` fragments with neighbouring equal
weights merged, exactly A1111's fragments; :mod:`sdbatch.stages.encoding` turns them into compel fragments.

    >>> parse_attention("a ((house:1.3)) [on] a (hill:0.5), (sky)")
    [[('a ', 1.0), ('house', 1.43), (' ', 1.0), ('on', 0.9091), (' a ', 1.0), ('hill', 0.5), (', ', 1.0), ('sky', 1.1)]]
    >>> parse_attention("a cat BREAK a dog")
    [[('a cat', 1.0)], [('a dog', 1.0)]]
    >>> has_syntax("a wolf, howling at the moon"), has_syntax("a (wolf:1.2)")
    (False, True)

Weights are rounded to 4 decimals (A1111 keeps the float products: ``1.5730000000000004``).
"""

from __future__ import annotations

import re

#: A1111's tokens of the attention syntax (``re_attention``), in its order
_ATTENTION = re.compile(r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""", re.X)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
ROUND = 1.1
SQUARE = 1 / 1.1

Fragment = tuple[str, float]


def parse_attention(text: str) -> list[list[Fragment]]:
    """``text``'s segments (``BREAK`` separates them), each a list of (text, weight) fragments (A1111's)."""
    res: list[list] = []  # [text, weight] or [None, None] for a BREAK
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for item in res[start:]:
            if item[0] is not None:
                item[1] *= factor

    for match in _ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            res.append([token[1:], 1.0])
        elif token == "(":
            round_brackets.append(len(res))
        elif token == "[":
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            multiply(round_brackets.pop(), _number(weight))
        elif token == ")" and round_brackets:
            multiply(round_brackets.pop(), ROUND)
        elif token == "]" and square_brackets:
            multiply(square_brackets.pop(), SQUARE)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i:
                    res.append([None, None])
                res.append([part, 1.0])
    for start in round_brackets:
        multiply(start, ROUND)
    for start in square_brackets:
        multiply(start, SQUARE)
    segments: list[list[Fragment]] = [[]]
    for piece, weight in res:
        if piece is None:
            segments.append([])
            continue
        weight = round(weight, 4)
        frags = segments[-1]
        if frags and frags[-1][1] == weight:
            frags[-1] = (frags[-1][0] + piece, weight)
        elif piece or not frags:
            frags.append((piece, weight))
    segments = [[(t, w) for t, w in seg if t] or [("", 1.0)] for seg in segments]
    if len(segments) > 1 and segments[-1] == [("", 1.0)]:
        segments.pop()  # a trailing BREAK starts no chunk (A1111 adds a chunk only for tokens after it)
    return segments


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # "1.2.3" matches A1111's pattern; A1111 itself would fail on it: weight 1
        return 1.0


def has_syntax(text: str) -> bool:
    """Whether A1111's reading of ``text`` differs from the literal text (a weight, an escape, a ``BREAK``)."""
    if not any(ch in text for ch in "()[]\\") and "BREAK" not in text:
        return False
    return parse_attention(text) != [[(text, 1.0)]]


def plain_text(segments: list[list[Fragment]]) -> str:
    """The text the segments hold, without weights or breaks (what a one-segment, unweighted prompt reads)."""
    return " ".join("".join(t for t, _ in seg) for seg in segments)


def is_unweighted(segments: list[list[Fragment]]) -> bool:
    """One segment whose every fragment has weight 1: the text alone says how it is encoded."""
    return len(segments) == 1 and all(w == 1.0 for _, w in segments[0])
