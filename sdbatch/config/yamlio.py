"""Safe YAML loading that remembers where every value came from.

``load_yaml(text)`` returns plain Python data plus a map from a value's path (a tuple of keys and list
indices, e.g. ``("stages", 1, "strength")``) to its 1-based line, so validation errors can say
``recipe.yaml:12: stages[1].strength: ...``. Only YAML's standard tags are accepted (never
``!!python/...``), duplicate keys are refused, and before anything is expanded the document is measured:
aliases and merge keys (``<<``) count as what they expand to against one budget (:data:`MAX_NODES`), so an
"alias bomb" is answered at once and in bounded memory, and nesting deeper than :data:`MAX_DEPTH` levels
(written out, through aliases or merges) is refused instead of exhausting the stack.
"""

from __future__ import annotations

from typing import Any

import yaml

Path_ = tuple  # a value's path: keys and list indices

MAX_NODES = 1_000_000  # values an alias-expanded document may have
MAX_DEPTH = 64  # nesting of lists, mappings and merges, written out or through aliases

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


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _where(node: yaml.Node) -> int:
    """An alias's own line (where the expansion is asked for), else the node's."""
    return getattr(node, "alias_line", None) or _line(node)


_TOO_DEEP = f"YAML nests deeper than {MAX_DEPTH} levels of lists, mappings and merges ('<<')"
_TOO_BIG = f"YAML expands to more than {MAX_NODES} values (an alias bomb?)"


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing nesting deeper than :data:`MAX_DEPTH` while it composes.

    PyYAML composes recursively, so a few kilobytes of ``[[[[...`` would otherwise end in a RecursionError;
    here the first collection past the limit stops the parse. Each alias gives its own shallow copy of the
    anchored node (sharing its contents) marked with the alias's line, so an expansion that goes too far can
    be blamed on the alias that asked for it.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            line = self.peek_event().start_mark.line + 1
            node = super().compose_node(parent, index)
            alias = type(node)(node.tag, node.value, node.start_mark, node.end_mark)
            alias.alias_line = line
            return alias
        nested = self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent)
        if nested:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise YamlError(self.peek_event().start_mark.line + 1, _TOO_DEEP)
        try:
            return super().compose_node(parent, index)
        finally:
            if nested:
                self._depth -= 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    """What a node expands into: items, keys and values, and each mapping a ``<<`` merges in."""
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if not isinstance(node, yaml.MappingNode):
        return []
    out = []
    for key, value in node.value:
        if key.tag == _MERGE_TAG:
            out.extend(value.value if isinstance(value, yaml.SequenceNode) else [value])
        else:
            out += [key, value]
    return out


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a node graph whose expansion would be too big or too deep, before expanding anything.

    One pass over the graph (each node once, however many aliases share it) gives every node the number of
    values its expansion builds and how many levels it nests (a merged mapping counting as one). Aliases and
    merge keys thus count against :data:`MAX_NODES` as what they expand to, in time linear in the file.
    """
    size: dict[int, int] = {}
    height: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        kids = _children(node)
        if done:
            active.discard(key)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            height[key] = (1 + max((height[id(k)] for k in kids), default=0)) if isinstance(
                node, (yaml.SequenceNode, yaml.MappingNode)) else 0
            continue
        if key in size:
            continue
        active.add(key)
        stack.append((node, True))
        for kid in kids:
            if id(kid) in active:  # an alias inside what it names: endless nesting
                raise YamlError(_where(kid), _TOO_DEEP)
            if id(kid) not in size:
                stack.append((kid, False))
    if height[id(root)] > MAX_DEPTH:
        raise YamlError(_blame(root, lambda n, level: level + height[id(n)] - 1 > MAX_DEPTH), _TOO_DEEP)
    if size[id(root)] > MAX_NODES:
        raise YamlError(_blame(root, lambda n, level: size[id(n)] > MAX_NODES), _TOO_BIG)


def _blame(root: yaml.Node, over: Any) -> int:
    """The line to name: follow the first child still ``over`` the limit down to an alias, or as far as it goes."""
    node, level = root, 1
    while not hasattr(node, "alias_line") and level <= MAX_DEPTH:
        nxt = next((k for k in _children(node) if over(k, level + 1)), None)
        if nxt is None:
            break
        node, level = nxt, level + 1
    return _where(node)


class _Builder:
    """Node graph -> plain data (aliases and merge keys expanded), recording each value's line."""

    def __init__(self) -> None:
        self.lines: dict[Path_, int] = {}
        self.constructor = yaml.constructor.SafeConstructor()

    def build(self, node: yaml.Node, path: Path_) -> Any:
        self.lines.setdefault(path, _line(node))
        if isinstance(node, yaml.ScalarNode):
            if node.tag not in _STANDARD_SCALAR_TAGS:
                raise YamlError(_line(node), f"YAML tag {node.tag!r} is not allowed (safe loading only)")
            return self.constructor.construct_object(node, deep=True)
        if not isinstance(node, (yaml.SequenceNode, yaml.MappingNode)):
            raise YamlError(_line(node), "unsupported YAML node")
        if node.tag != (_SEQ_TAG if isinstance(node, yaml.SequenceNode) else _MAP_TAG):
            raise YamlError(_line(node), f"YAML tag {node.tag!r} is not allowed (safe loading only)")
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        result: dict = {}
        self._entries(node, path, result)
        return result

    def _entries(self, node: yaml.MappingNode, path: Path_, result: dict) -> None:
        """Add ``node``'s own keys to ``result``, then its merged mappings' keys; a key already there wins.

        That is YAML's merge order: the mapping's own keys, then each ``<<`` source in turn (its own keys,
        then its merges). Keys that lose are never built, so their lines never shadow the user's own.
        """
        merges = []
        own: set = set()
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merges.extend(value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node])
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlError(_line(key_node), "mapping keys must be plain scalars")
            key = self.build(key_node, path + ("<key>",))
            if isinstance(key, (list, dict)) or key is None:
                raise YamlError(_line(key_node), "mapping keys must be plain scalars")
            if key in own:
                raise YamlError(_line(key_node), f"{format_path(path + (key,))}: duplicate key")
            own.add(key)
            if key in result:
                continue  # set by a mapping that merges this one
            self.lines.setdefault(path + (key,), _line(key_node))
            result[key] = self.build(value_node, path + (key,))
        for source in merges:
            if not isinstance(source, yaml.MappingNode):
                raise YamlError(_line(source), "'<<' merges only mappings")
            self._entries(source, path, result)


def load_yaml(text: str) -> tuple[Any, dict[Path_, int]]:
    """Parse ``text`` safely. Returns ``(data, lines)``; raises :class:`YamlError`.

    Example::

        data, lines = load_yaml("a:\\n  b: 1\\n")
        assert data == {"a": {"b": 1}} and lines[("a", "b")] == 2
    """
    loader = _Loader(text)
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
    _check_expansion(node)
    builder = _Builder()
    data = builder.build(node, ())
    return data, builder.lines
