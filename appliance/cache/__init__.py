"""The semantic cache: answer a repeated question from disk instead of the student.

    embedder = load_embedder(cfg.cache.embedder)
    cache = SemanticCache(cache_path(cfg.cache), embedder, cfg.cache)
    hit = cache.lookup(CacheKey(namespace, student_version, params_key), normalize_prompt(messages))
"""

from __future__ import annotations

from .embedder import Embedder, load_embedder
from .store import CacheHit, CacheKey, SemanticCache, cache_path
from .verify import MatchCheck, check_match, normalize_prompt

__all__ = [
    "CacheHit",
    "CacheKey",
    "Embedder",
    "MatchCheck",
    "SemanticCache",
    "cache_path",
    "check_match",
    "load_embedder",
    "normalize_prompt",
]
