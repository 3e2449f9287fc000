"""The bounds that keep ``validate`` fast and a recipe's work finite, in one place.

Every bound is checked before the work it bounds: the job count before any job is built
(:func:`sdbatch.core.plan.count_jobs`), a schedule's cost before it is compiled or evaluated
(:func:`schedule_work`), an image's pixels before it is decoded (:mod:`sdbatch.config.images`).
"""

from __future__ import annotations

import re

#: jobs a recipe may make unless ``--max-jobs N`` raises it
MAX_JOBS = 100_000
#: the largest width or height, explicit or taken from an input
MAX_SIDE = 16384
#: characters of one prompt or negative prompt
MAX_PROMPT_CHARS = 10_000
#: seeds are what ``torch.Generator.manual_seed`` takes: 0 .. 2**64 - 1
MAX_SEED = 2**64 - 1
#: pixels of an input image or mask (PIL's own default, set explicitly; more is a decompression bomb)
MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3

# A schedule's cost in work units (0.1 us each, measured with margin on one core of a 2020s CPU): compiling a
# keyframe costs COMPILE_NUMBER, or COMPILE_TOKEN per token of its expression; evaluating a frame costs
# EVAL_NUMBER under a numeric keyframe, or EVAL_TOKEN per token of the expression that holds at that frame.
COMPILE_NUMBER, COMPILE_TOKEN, EVAL_NUMBER, EVAL_TOKEN = 35, 40, 1, 3
#: the compile cost of one schedule (checked before it is compiled): ~20 ms
MAX_SCHEDULE_COMPILE = 200_000
#: compile + evaluation cost of every schedule of a recipe over its animations' frames: ~0.4 s
MAX_SCHEDULE_WORK = 4_000_000

_KEY = re.compile(r"\s*([0-9]+)\s*:\s*\(")
_NUMBER = re.compile(r"\s*[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*")
_TOKEN = re.compile(r"[A-Za-z_]\w*|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|\*\*|[-+*/%]")


def check_seed(value: int, what: str = "") -> int:
    """``value`` if it is a seed (0..2**64-1); else ValueError naming the range. (A recipe's ``-1``, a random
    seed, is accepted before this by :func:`sdbatch.config.types.recipe_seed`; a record's seed never is -1.)"""
    subject = f"{what} " if what else ""
    if not 0 <= value <= MAX_SEED:
        shown = f"{value:,}" if abs(value) < 10**30 else f"a {len(str(abs(value)))}-digit number"
        raise ValueError(f"{subject}{shown} is outside the seeds 0..2^64-1 ({MAX_SEED:,})")
    return value


def schedule_keys(text: str) -> list[tuple[int, int]]:
    """(frame, tokens) of each keyframe of a schedule, sorted by frame, the last duplicate winning; tokens is 0
    for a number. Linear in the text and lenient: the schedule module itself parses and reports errors."""
    if _NUMBER.fullmatch(text):
        return [(0, 0)]
    keys: dict[int, int] = {}
    pos, end = 0, len(text)
    while pos < end:
        match = _KEY.match(text, pos)
        if match is None:
            break
        depth, pos = 1, match.end()
        while pos < end and depth:
            depth += {"(": 1, ")": -1}.get(text[pos], 0)
            pos += 1
        value = text[match.end():pos - 1]
        keys[int(match.group(1))] = 0 if _NUMBER.fullmatch(value) else max(1, len(_TOKEN.findall(value)))
        while pos < end and (text[pos].isspace() or text[pos] == ","):
            pos += 1
    return sorted(keys.items())


def compile_work(keys: list[tuple[int, int]]) -> int:
    return sum(COMPILE_TOKEN * tokens if tokens else COMPILE_NUMBER for _, tokens in keys)


def schedule_work(text: str, frames: int) -> int:
    """Work units to compile ``text`` and evaluate it at frames 0..frames-1 (see the constants above)."""
    keys = schedule_keys(text)
    work = compile_work(keys) + EVAL_NUMBER * min(frames, keys[0][0] if keys else frames)
    for i, (frame, tokens) in enumerate(keys):
        stop = min(keys[i + 1][0] if i + 1 < len(keys) else frames, frames)
        if stop > frame:
            work += (stop - frame) * (EVAL_TOKEN * tokens if tokens else EVAL_NUMBER)
    return work


def check_schedule_size(text: str) -> None:
    """ValueError when compiling the schedule alone would take more than MAX_SCHEDULE_COMPILE."""
    keys = schedule_keys(text)
    work = compile_work(keys)
    if work > MAX_SCHEDULE_COMPILE:
        tokens = sum(t for _, t in keys)
        raise ValueError(f"schedule too large to check quickly ({len(keys):,} keyframes, {tokens:,} expression "
                         f"tokens: {work:,} work units, the limit is {MAX_SCHEDULE_COMPILE:,}); use fewer "
                         "keyframes or shorter expressions")
