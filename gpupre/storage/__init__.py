"""Writing flattened tables, importers, map->flat conversion, reordering, caching and I/O statistics."""

from .cache import CachedFileSystem
from .flatten import MapLayout, flat_to_map, flatten, map_to_flat
from .importers import Column, import_criteo, import_csv, import_movielens, import_taobao
from .iostats import CountingFileSystem
from .layout import AccessLog, Workload, column_order, measured_cache_options, reorder
from .objectstore import LocalObjectStore
from .synth import SynthSpec, synthesize, write_criteo_text
from .write import TableWriter, to_flat_table, write_table

__all__ = [
    "AccessLog",
    "CachedFileSystem",
    "Column",
    "CountingFileSystem",
    "LocalObjectStore",
    "MapLayout",
    "SynthSpec",
    "TableWriter",
    "Workload",
    "column_order",
    "flat_to_map",
    "flatten",
    "import_criteo",
    "import_csv",
    "import_movielens",
    "import_taobao",
    "map_to_flat",
    "measured_cache_options",
    "reorder",
    "synthesize",
    "to_flat_table",
    "write_criteo_text",
    "write_table",
]
