"""Groups of correlated images: frames of one movie, tiles of one slide.

Images of one group are not independent samples: a split that puts frames of one movie in
both training and test measures memory, not generalisation. The rules read image names only.

Example:
    >>> group_of("hela_t012")
    'hela'
    >>> group_of("TCGA-A7-A0DA-01Z-00-DX1_3")
    'TCGA-A7-A0DA'
    >>> describe_groups(["a_t1", "a_t2", "b_t1", "lone"])
    (3, ('time-lapse movie (<movie>_t<frame>)',))
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: Built-in rules for images that are not independent; the first that matches names the group.
GROUP_RULES = (
    (r"(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})", "TCGA case (one slide)"),
    (r"^(.+?)[_-]t\d+$", "time-lapse movie (<movie>_t<frame>)"),
)


def _match(name: str, pattern: str | None) -> tuple[str, str] | None:
    """``(group, rule description)`` of the first rule that matches ``name``, else None."""
    rules = [(pattern, f"user pattern {pattern!r}")] if pattern else GROUP_RULES
    for rule, description in rules:
        found = re.search(rule, name, flags=re.IGNORECASE)
        if found:
            return (found.group(1) if found.groups() else found.group(0)), description
    return None


def group_of(name: str, pattern: str | None = None) -> str:
    """The group of correlated images an image belongs to; the image itself by default.

    ``pattern`` (a regular expression searched in the image stem; its first group, or the whole
    match, is the group) replaces :data:`GROUP_RULES`.
    """
    found = _match(name, pattern)
    return name if found is None else found[0]


def describe_groups(names: Iterable[str]) -> tuple[int, tuple[str, ...]]:
    """How many groups the names fall in, and the rules that joined two or more images.

    A rule that matched only single images (one frame per movie) joined nothing and is left
    out, so an empty tuple means every image is its own group.
    """
    members: dict[str, list[str]] = {}
    rule_of: dict[str, str] = {}
    for name in names:
        found = _match(name, None)
        key = name if found is None else found[0]
        members.setdefault(key, []).append(name)
        if found is not None:
            rule_of[key] = found[1]
    used = {rule_of[k] for k, v in members.items() if len(v) > 1 and k in rule_of}
    return len(members), tuple(d for _, d in GROUP_RULES if d in used)
