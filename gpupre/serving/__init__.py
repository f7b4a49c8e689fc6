"""The serving side: capture training data where it is made (KV stores with a TTL, loggers)."""

from .codec import FeatureCodec, encode_rows, gather_rows
from .kv import KVStore, RedisKV, SqliteKV
from .loggers import EagerLogger, LazyLogger, item_key, user_key

__all__ = [
    "EagerLogger",
    "FeatureCodec",
    "KVStore",
    "LazyLogger",
    "RedisKV",
    "SqliteKV",
    "encode_rows",
    "gather_rows",
    "item_key",
    "user_key",
]
