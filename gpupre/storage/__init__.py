"""Writing flattened tables, importers, map->flat conversion and I/O statistics."""

from .flatten import MapLayout, flat_to_map, flatten, map_to_flat
from .importers import Column, import_criteo, import_csv, import_movielens, import_taobao
from .iostats import CountingFileSystem
from .synth import SynthSpec, synthesize, write_criteo_text
from .write import TableWriter, to_flat_table, write_table

__all__ = [
    "Column",
    "CountingFileSystem",
    "MapLayout",
    "SynthSpec",
    "TableWriter",
    "flat_to_map",
    "flatten",
    "import_criteo",
    "import_csv",
    "import_movielens",
    "import_taobao",
    "map_to_flat",
    "synthesize",
    "to_flat_table",
    "write_criteo_text",
    "write_table",
]
