"""`DedupPlan`: a plan over de-duplicated batches, transforming request features once per request.

A de-duplicated batch holds item features for its N rows and user and context features for its
R requests (`batch.requests`, R <= N). The pipeline splits in two: ops on request features run on
the R request rows, ops on item features on the N rows, each half one fused `Plan`. The launches
of a batch are those of the two plans; neither grows with the number of features.
"""

from __future__ import annotations

from dataclasses import replace

from .._checks import ensure_instance
from ..batch import Batch
from ..errors import ConfigError, DataError
from ..schema import REQUEST_GROUPS, Schema
from .ops import per_feature

__all__ = ["DedupPlan"]


class DedupPlan:
    """Two plans, one for the request features and one for the item features of `schema`.

    Raises:
        ConfigError: an op takes both request and item features (a cross of a user feature
            with an item feature, say): those need whole rows; read the dataset with
            `gp.Dataset(path, expand=True)`.
    """

    def __init__(self, pipeline, schema: Schema, device: str = "cpu", host_stage: bool | None = None):
        from .pipeline import Pipeline

        output = pipeline.output_schema(schema)  # the whole pipeline's checks and messages, and its order
        requests_side = {f.name for f in schema if f.group in REQUEST_GROUPS}
        request_ops, item_ops = [], []
        for op in pipeline.ops:
            for single in per_feature(op):
                inputs = {name for inputs, _ in single.applications() for name in inputs}
                outputs = {out for _, out in single.applications()}
                if inputs <= requests_side:
                    request_ops.append(single)
                    requests_side |= outputs
                elif inputs.isdisjoint(requests_side):
                    item_ops.append(single)
                else:
                    raise ConfigError(
                        f"{op} takes request features {sorted(inputs & requests_side)} and item features "
                        f"{sorted(inputs - requests_side)}; a de-duplicated batch transforms request features "
                        "once per request, so no op may mix them: read whole rows with "
                        "gp.Dataset(path, expand=True)"
                    )
        request_schema = Schema(tuple(f for f in schema if f.group in REQUEST_GROUPS))
        item_schema = Schema(tuple(f for f in schema if f.group not in REQUEST_GROUPS), schema.labels, schema.extras)
        self.pipeline, self.input_schema, self.device = pipeline, schema, device
        self.requests = Pipeline(request_ops, request_schema).compile(request_schema, device, host_stage)
        self.items = Pipeline(item_ops, item_schema).compile(item_schema, device, host_stage)
        self.output_schema = output  # expand() orders the features by it, as a plain plan would

    @property
    def launches(self) -> int:
        return self.requests.launches + self.items.launches

    def run(self, batch, host_stage: bool = True):
        """Both plans on a de-duplicated batch: the item rows and its requests."""
        _check_dedup(batch)
        items = self.items.run(batch, host_stage)
        requests = self.requests.run(batch.requests, host_stage)
        return replace(items, requests=requests, schema=self.output_schema)  # items carry inverse, moved as they are

    def run_host(self, batch):
        """The host stages only (the loader's workers run them before the transfer)."""
        _check_dedup(batch)
        return replace(self.items.run_host(batch), requests=self.requests.run_host(batch.requests))

    def describe(self) -> str:
        return (f"De-dup plan on {self.device}: request features once per request, item features per row\n"
                f"requests: {self.requests.describe()}\nitems: {self.items.describe()}")  # fmt: skip


def _check_dedup(batch) -> None:
    ensure_instance(batch, Batch, "batch", "a gp.Batch, such as dataset.read(unit)")
    if batch.requests is None or batch.inverse is None:
        raise DataError(
            "a de-dup plan got a batch without requests; compile the pipeline with dedup=False for "
            "plain batches (or read de-dup tables with gp.Dataset, which gives requests and inverse)"
        )
