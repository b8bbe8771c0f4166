"""The original EntmaxKV module path of ``QuestKVCache`` (``entmaxkv/kv_cache.py``).

A re-export, not a copy: ``entmaxkv.kv_cache.QuestKVCache is entmaxkv.QuestKVCache``; the one
definition lives in ``entmaxkv.quest_cache``.
"""

from entmaxkv.quest_cache import QuestKVCache

__all__ = ["QuestKVCache"]
