"""The YAML loader: merge keys, lines of merged values, and the limits on expansion and nesting."""

from __future__ import annotations

import time

import pytest

from sdbatch.config.yamlio import MAX_DEPTH, MAX_NODES, YamlError, load_yaml


def nested_lists(levels: int) -> str:
    return "[" * levels + "x" + "]" * levels + "\n"


def test_nesting_up_to_the_limit_loads_and_one_more_level_is_refused():
    data, _ = load_yaml(nested_lists(MAX_DEPTH))
    for _ in range(MAX_DEPTH):
        data = data[0]
    assert data == "x"
    with pytest.raises(YamlError, match=f"deeper than {MAX_DEPTH} levels") as info:
        load_yaml(nested_lists(MAX_DEPTH + 1))
    assert info.value.line == 1


def test_nesting_through_aliases_counts_what_they_expand_to():
    half = MAX_DEPTH // 2
    ok = f"a: &a {nested_lists(half - 1).strip()}\nb: {'[' * (half - 1)}*a{']' * (half - 1)}\n"
    load_yaml(ok)  # root mapping + (half - 1) + (half - 1) + 1 levels = MAX_DEPTH
    too_deep = f"a: &a {nested_lists(half).strip()}\nb: {'[' * half}*a{']' * half}\n"
    with pytest.raises(YamlError, match="deeper than") as info:
        load_yaml(too_deep)
    assert info.value.line == 2  # the alias that nests too deep, not the anchor


@pytest.mark.parametrize("text", ["a: &a [*a]\n", "a: &a {<<: *a}\n", "a: &a {b: [{c: *a}]}\n"])
def test_an_alias_inside_what_it_names_is_refused(text):
    with pytest.raises(YamlError, match="deeper than"):
        load_yaml(text)


def test_merge_chains_count_against_the_expansion_budget():
    levels = 20
    text = "a0: &a0 {}\n" + "".join(f"a{i}: &a{i} {{<<: [*a{i - 1}, *a{i - 1}, *a{i - 1}]}}\n"
                                    for i in range(1, levels))
    start = time.perf_counter()
    with pytest.raises(YamlError, match=f"more than {MAX_NODES} values") as info:
        load_yaml(text)
    assert time.perf_counter() - start < 0.5
    # the first mapping whose merges expand past the budget: 3^13 > 10^6
    assert info.value.line == 14 and "<<" in text.splitlines()[info.value.line - 1]


def test_merges_within_budget_load():
    text = "a0: &a0 {k: 1}\n" + "".join(f"a{i}: &a{i} {{<<: [*a{i - 1}, *a{i - 1}]}}\n" for i in range(1, 10))
    data, _ = load_yaml(text)
    assert data["a9"] == {"k": 1}


def test_merge_order_and_the_lines_of_merged_values():
    text = (
        "base: &b {steps: 10, guidance: 7}\n"  # 1
        "over: &o {steps: 20, width: 64}\n"  # 2
        "s:\n"  # 3
        "  <<: [*b, *o]\n"  # 4
        "  guidance: 3\n"  # 5
        "t:\n"  # 6
        "  guidance: 4\n"  # 7
        "  <<: *b\n"  # 8
        "u: {<<: *o, extra: {<<: *b}}\n"  # 9
    )
    data, lines = load_yaml(text)
    # the mapping's own keys win, wherever `<<` stands; of the merged ones the earlier mapping wins (YAML spec)
    assert data["s"] == {"guidance": 3, "steps": 10, "width": 64}
    assert data["t"] == {"guidance": 4, "steps": 10}
    assert data["u"] == {"steps": 20, "width": 64, "extra": {"steps": 10, "guidance": 7}}
    assert lines[("s", "guidance")] == 5 and lines[("s", "steps")] == 1 and lines[("s", "width")] == 2
    assert lines[("t", "guidance")] == 7  # its own line, though the merge after it also has the key
    assert lines[("u", "extra", "steps")] == 1


def test_duplicate_keys_in_a_merged_mapping_are_refused():
    with pytest.raises(YamlError, match="duplicate key") as info:
        load_yaml("b: &b\n  k: 1\n  k: 2\nc: {<<: *b}\n")
    assert info.value.line == 3
