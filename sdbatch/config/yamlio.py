"""Safe YAML loading that remembers where every value came from.

``load_yaml(text)`` returns plain Python data plus a map from a value's path (a tuple of keys and list
indices, e.g. ``("stages", 1, "strength")``) to its 1-based line, so validation errors can say
``recipe.yaml:12: stages[1].strength: ...``. Only YAML's standard tags are accepted (never
``!!python/...``), duplicate keys are refused, and aliases are expanded under a node budget so an
"alias bomb" is answered quickly and in bounded memory.
"""

from __future__ import annotations

from typing import Any

import yaml

Path_ = tuple  # a value's path: keys and list indices

MAX_NODES = 1_000_000

_STANDARD_SCALAR_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:timestamp",
}
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlError(ValueError):
    """A YAML problem at a 1-based line (0 when unknown)."""

    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line
        self.message = message


def format_path(path: Path_) -> str:
    """``("stages", 1, "strength")`` -> ``stages[1].strength``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


class _Builder:
    def __init__(self) -> None:
        self.lines: dict[Path_, int] = {}
        self.budget = MAX_NODES
        self.constructor = yaml.constructor.SafeConstructor()

    def build(self, node: yaml.Node, path: Path_) -> Any:
        self.budget -= 1
        if self.budget < 0:
            raise YamlError(
                node.start_mark.line + 1,
                f"YAML expands to more than {MAX_NODES} values (an alias bomb?)",
            )
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.ScalarNode):
            if node.tag not in _STANDARD_SCALAR_TAGS:
                raise YamlError(node.start_mark.line + 1, f"YAML tag {node.tag!r} is not allowed (safe loading only)")
            return self.constructor.construct_object(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ_TAG:
                raise YamlError(node.start_mark.line + 1, f"YAML tag {node.tag!r} is not allowed (safe loading only)")
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            if node.tag != _MAP_TAG:
                raise YamlError(node.start_mark.line + 1, f"YAML tag {node.tag!r} is not allowed (safe loading only)")
            return self._mapping(node, path)
        raise YamlError(node.start_mark.line + 1, "unsupported YAML node")

    def _mapping(self, node: yaml.MappingNode, path: Path_) -> dict:
        result: dict = {}
        merged: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for source in sources:
                    if not isinstance(source, yaml.MappingNode):
                        raise YamlError(source.start_mark.line + 1, "'<<' merges only mappings")
                    for k, v in self._mapping(source, path).items():
                        merged.setdefault(k, v)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlError(key_node.start_mark.line + 1, "mapping keys must be plain scalars")
            key = self.build(key_node, path + ("<key>",))
            if isinstance(key, (list, dict)) or key is None:
                raise YamlError(key_node.start_mark.line + 1, "mapping keys must be plain scalars")
            if key in result:
                raise YamlError(key_node.start_mark.line + 1, f"{format_path(path + (key,))}: duplicate key")
            self.lines[path + (key,)] = key_node.start_mark.line + 1
            result[key] = self.build(value_node, path + (key,))
        for k, v in merged.items():
            result.setdefault(k, v)
        return result


def load_yaml(text: str) -> tuple[Any, dict[Path_, int]]:
    """Parse ``text`` safely. Returns ``(data, lines)``; raises :class:`YamlError`.

    Example::

        data, lines = load_yaml("a:\\n  b: 1\\n")
        assert data == {"a": {"b": 1}} and lines[("a", "b")] == 2
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        if exc.context_mark is not None and exc.problem_mark is not None and "<stream end>" in (exc.problem or ""):
            # an unclosed bracket or quote: point at where it was opened
            mark = exc.context_mark
            problem = f"{exc.context} that is never closed ({exc.problem})"
        line = mark.line + 1 if mark else 0
        raise YamlError(line, f"YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise YamlError(0, f"YAML error: {exc}") from None
    finally:
        loader.dispose()
    if node is None:
        raise YamlError(1, "the file is empty")
    builder = _Builder()
    data = builder.build(node, ())
    return data, builder.lines
