"""The original EntmaxKV module layout: every module path its documentation names and this
library keeps imports, and the names are the library's own objects (no copies)."""

import importlib

import pytest

import entmaxkv as ekv

ORIGINAL_PATHS = [
    ("entmaxkv", "QuestKVCache"),
    ("entmaxkv.kv_cache", "QuestKVCache"),
    ("entmaxkv.kernels.triton_entmax", "triton_entmax"),
    ("entmaxkv.attention_topk", "quest_sparse_attention_decode_paged"),
    ("entmaxkv.attention_gaussian", "quest_sparse_attention_decode_gaussian_aware_entmax"),
]


@pytest.mark.parametrize("module, name", ORIGINAL_PATHS)
def test_original_module_paths_import(module, name):
    assert callable(getattr(importlib.import_module(module), name))


def test_kv_cache_reexports_the_one_class():
    from entmaxkv.kv_cache import QuestKVCache

    assert QuestKVCache is ekv.QuestKVCache

