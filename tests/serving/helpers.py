"""Shared by the serving tests on the host and on the GPU."""

from gpupre.serving import LazyLogger, SqliteKV, item_key


def lazily_logged(item_ids, batches, schema, seen_upto: int):
    """Each batch (the same items on other devices or array types) lazily logged into its own
    store, ranked and scrolled the same way: [the values each store holds for the items]."""
    values = []
    for batch in batches:
        store = SqliteKV()
        logger = LazyLogger(store, schema)
        logger.log_ranking("r", item_ids, batch)
        logger.on_paginate("r", seen_upto=seen_upto)
        logger.close()
        values.append(store.get_many([item_key("r", i) for i in item_ids]))
    return values
