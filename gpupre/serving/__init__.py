"""The serving side: capture training data where it is made (KV stores, loggers, label join, writers)."""

from .codec import FeatureCodec, encode_rows, gather_rows
from .join import LabelJoiner
from .kv import KVStore, RedisKV, SqliteKV
from .loggers import EagerLogger, LazyLogger, item_key, user_key
from .simulate import default_scroll, simulate
from .writers import DedupWriter, JoinedRequest, TabularWriter

__all__ = [
    "DedupWriter",
    "EagerLogger",
    "FeatureCodec",
    "JoinedRequest",
    "KVStore",
    "LabelJoiner",
    "LazyLogger",
    "RedisKV",
    "SqliteKV",
    "TabularWriter",
    "default_scroll",
    "encode_rows",
    "gather_rows",
    "item_key",
    "simulate",
    "user_key",
]
