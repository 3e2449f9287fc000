"""Wildcard prompts with the ``dynamicprompts`` library: ``{a|b|c}``, ``{2$$a|b|c}`` and ``__name__``.

``__name__`` reads ``wildcards/name.txt`` (one value a line, ``#`` comments) or a YAML file in ``wildcards/``
beside the recipe. A prompt is a template only when it holds ``{`` or a ``__name__``: any other prompt is
never parsed and stays exactly as written (its job ids are those of older versions).

Only dynamicprompts' variants (``{...}``) and wildcards (``__...__``) are expanded: its comments (``#``, ``//``,
``/* */``), variables (``${...}``) and wrap commands (``%{...}``) are switched off, so ``#ff0000``, ``50%``,
``$5`` and A1111's ``(x:1.2)``, ``[x]`` pass through as written.

``random`` (the default): each job's prompt is drawn by a generator seeded with the job's seed, so a resumed or
re-planned run draws the same. ``combinatorial``: every expansion is a prompt of the sweep (at most
:data:`MAX_EXPANSIONS` per template). dynamicprompts is imported only when a recipe has a template.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any

WILDCARD_DIR = "wildcards"
MAX_EXPANSIONS = 10_000  # prompts one combinatorial template may make
_WILDCARD = re.compile(r"__[^_\s{}|][^\s{}|]*?__")
# characters dynamicprompts would read as comments: swapped for private-use stand-ins while it parses
_HASH, _SLASH = "\ue000", "\ue001"
_COMMENT_SLASH = re.compile(r"/(?=[/*])|(?<=\*)/")


def is_template(text: str) -> bool:
    """Whether ``text`` uses wildcard syntax (a variant ``{...}`` or a wildcard ``__name__``)."""
    return "{" in text or ("__" in text and _WILDCARD.search(text) is not None)


def _protect(text: str) -> str:
    return _COMMENT_SLASH.sub(_SLASH, text.replace("#", _HASH))


def _restore(text: str) -> str:
    return text.replace(_HASH, "#").replace(_SLASH, "/")


class Wildcards:
    """The wildcard files beside a recipe (read lazily) and its templates, parsed once each."""

    def __init__(self, base_dir: Path):
        self.folder = base_dir / WILDCARD_DIR
        self._manager: Any = None
        self._parsed: dict[str, Any] = {}
        self._expanded: dict[str, list[str]] = {}

    @property
    def manager(self) -> Any:
        if self._manager is None:
            from dynamicprompts.wildcards import WildcardManager

            logging.getLogger("dynamicprompts").setLevel(logging.ERROR)  # we report missing wildcards ourselves
            self._manager = WildcardManager(self.folder if self.folder.is_dir() else None)
        return self._manager

    def _command(self, text: str) -> Any:
        command = self._parsed.get(text)
        if command is None:
            from dynamicprompts.parser.parse import parse

            with warnings.catch_warnings():  # pyparsing's deprecations of what dynamicprompts calls: not ours
                warnings.simplefilter("ignore", DeprecationWarning)
                command = self._parsed[text] = parse(_protect(text), parser_config=_config())
        return command

    def problem(self, text: str) -> str | None:
        """Why template ``text`` cannot be expanded (bad syntax, a wildcard with no file), or None."""
        try:
            command = self._command(text)
        except Exception as exc:  # noqa: BLE001 - pyparsing's errors: any of them means bad syntax
            return f"cannot read the wildcard template ({type(exc).__name__}: {str(exc).splitlines()[0]}); " \
                   "variants are {a|b|c} or {2$$a|b|c}, wildcards __name__"
        for name in _wildcard_names(command):
            if not self.manager.get_values(name).string_values:
                return f"wildcard __{name}__: no {self.folder / name}.txt (or .yaml) with values (wildcards are " \
                       f"files in {WILDCARD_DIR}/ beside the recipe)"
        return None

    def expand_random(self, text: str, seed: int) -> str:
        """The prompt the job with ``seed`` draws from template ``text``."""
        from random import Random

        from dynamicprompts.enums import SamplingMethod
        from dynamicprompts.sampling_context import SamplingContext

        context = SamplingContext(wildcard_manager=self.manager, default_sampling_method=SamplingMethod.RANDOM,
                                  parser_config=_config(), rand=Random(seed))
        return _restore(str(next(iter(context.sample_prompts(self._command(text), 1)))))

    def expand_all(self, text: str) -> list[str]:
        """Every prompt template ``text`` makes (``combinatorial``), without duplicates, in its order."""
        if text not in self._expanded:
            from dynamicprompts.enums import SamplingMethod
            from dynamicprompts.sampling_context import SamplingContext

            context = SamplingContext(wildcard_manager=self.manager,
                                      default_sampling_method=SamplingMethod.COMBINATORIAL, parser_config=_config())
            prompts = (_restore(str(p)) for p in context.sample_prompts(self._command(text), MAX_EXPANSIONS))
            self._expanded[text] = list(dict.fromkeys(prompts))
        return self._expanded[text]


def _config() -> Any:
    """dynamicprompts' parser with variables and wrap commands switched off (their openers are characters no
    prompt holds), so only variants and wildcards are syntax."""
    from dynamicprompts.parser.config import ParserConfig

    return ParserConfig(variable_start="\ue010{", variable_end="}", wrap_start="\ue011{", wrap_end="}")


def _wildcard_names(command: Any) -> list[str]:
    """The wildcard names a parsed template uses (variants' options included)."""
    from dynamicprompts.commands import SequenceCommand, VariantCommand, WildcardCommand

    names: list[str] = []
    stack = [command]
    while stack:
        node = stack.pop()
        if isinstance(node, WildcardCommand):
            if isinstance(node.wildcard, str):
                names.append(_restore(node.wildcard))
        elif isinstance(node, SequenceCommand):
            stack.extend(node.tokens)
        elif isinstance(node, VariantCommand):
            stack.extend(option.value for option in node.variants)
    return names
