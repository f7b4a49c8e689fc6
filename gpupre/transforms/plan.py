"""`compile()`: a pipeline and a schema become a `Plan` of fused stages, checked without data.

A plan runs in this order, each stage over all features at once::

    host stage    Truncate / SortByScore on the batch's own list features (shrinks the data
                  before any transfer), as one sparse level
    dense pass 1  one program per output: src column -> fill -> log -> clamp -> normalize ...
                  -> optionally an id (bucketize, hash, modulo, cast), all features in one pass
    sparse levels each level: one lengths pass, one prefix sum, one values pass over every
                  output key; ids made by dense pass 1 join level 0 as extra keys
    dense pass 2  programs over OverlapCount outputs (dense features made from lists)
    image stage   image features decoded and augmented by DALI, one graph per output image
                  (see images.py); independent of the rest

A sparse level is a table of "apps": (kind, input key a [, b], params), with elementwise id maps
(Hash, Modulo) fused in as pre-maps on the inputs and an epilogue on the output. A new level is
needed only when an op reads the output of another non-elementwise op, so the number of launches
depends on the depth of the pipeline, never on the number of features.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace

import numpy as np

from .._checks import ensure_instance
from ..batch import Batch, KeyedJagged
from ..errors import ConfigError, DataError
from ..schema import SCORED, Schema
from . import ops as O
from .images import IMAGE_OPS, image_chains
from .pipeline import Pipeline, output_schema, skip_materialized

__all__ = ["DenseProgram", "Plan", "SparseLevel", "compile"]

# dense program steps; ids are made by the terminal steps (>= D_BUCKETIZE)
D_END, D_FILL, D_LOG1P, D_CLAMP, D_NORMALIZE, D_MINMAX = 0, 1, 2, 3, 4, 5
D_BUCKETIZE, D_HASH, D_MODULO, D_TO_ID = 6, 7, 8, 9
# sparse app kinds
S_COPY, S_TRUNCATE, S_SORT, S_NGRAM, S_CROSS, S_INTERSECT, S_UNION, S_OVERLAP = range(8)
# elementwise id maps
M_END, M_HASH, M_MODULO = 0, 1, 2
MAX_MAPS = 4
PAIR_KINDS = {O.Cross: S_CROSS, O.Intersect: S_INTERSECT, O.Union: S_UNION, O.OverlapCount: S_OVERLAP}


@dataclass
class DenseProgram:
    """Per-output programs over the columns of one dense matrix, as flat tables.

    steps [P, S] opcodes; fparams [P, S, 2] float32; iparams [P, S, 3] int64; boundaries [B]
    float32 (Bucketize steps hold (offset, count, right) into it). A program's last step may make
    an id. out_dense[p] is the output row of its float result (the value before that id step) or
    -1; out_id[p] the id row of its id or -1; a program may have both.
    """

    src: np.ndarray
    steps: np.ndarray
    fparams: np.ndarray
    iparams: np.ndarray
    boundaries: np.ndarray
    out_dense: np.ndarray
    out_id: np.ndarray
    num_dense: int
    num_ids: int

    @property
    def identity(self) -> bool:
        """A pure copy of every input column in order: the pass can be skipped."""
        p = len(self.src)
        return (
            self.num_ids == 0
            and self.num_dense == p
            and not self.steps.any()
            and np.array_equal(self.src, np.arange(p))
            and np.array_equal(self.out_dense, np.arange(p))
        )


@dataclass
class SparseLevel:
    """One fused pass over list features: apps [A] reading input keys, writing output keys.

    kind [A]; a, b [A] input keys (-1: none); params [A, 3] int64; maps [A, 3, MAX_MAPS] int32
    (pre-maps of a, of b, epilogue) with map_params [A, 3, MAX_MAPS, 2] int64; weighted [A]
    (the output keeps a's weights); out [A] the output key, or the dense column of an
    OverlapCount. Output keys are numbered in app order, skipping OverlapCount apps.
    """

    kind: np.ndarray
    a: np.ndarray
    b: np.ndarray
    params: np.ndarray
    maps: np.ndarray
    map_params: np.ndarray
    weighted: np.ndarray
    out: np.ndarray
    num_inputs: int
    num_outputs: int
    num_derived: int
    has_weights: bool  # the output carries weights

    @property
    def identity(self) -> bool:
        return (
            self.num_outputs == self.num_inputs
            and len(self.kind) == self.num_inputs
            and not self.kind.any()
            and not self.maps.any()
            and np.array_equal(self.a, np.arange(self.num_inputs))
        )


@dataclass
class Plan:
    """A compiled pipeline: stages as tables, the output schema, and an executor to run them."""

    pipeline: object
    input_schema: Schema
    output_schema: Schema
    device: str
    host: SparseLevel | None
    dense: DenseProgram
    levels: list[SparseLevel]
    derived: DenseProgram | None
    executor: object = field(default=None, repr=False)
    materialized: tuple[str, ...] = ()  # outputs read from stored columns instead of computed
    images: object = None  # DaliImages running the image chains, or None

    @property
    def launches(self) -> int:
        """Kernel launches one batch costs in the device stage (independent of feature count)."""
        return self.executor.launches(self)

    def run(self, batch, host_stage: bool = True):
        """The plan on `batch`: its host stage (unless host_stage=False: done already, as in the
        loader's workers), then its device stage.

        Raises:
            DataError: the batch's keys are not the plan's, or its lengths do not match its values.
        """
        _check_batch(self, batch)
        out = self.executor.run(self, batch, host_stage)
        if self.images is not None:
            out = self.images.run(out)
        return out

    def run_host(self, batch):
        """The host stage only, on a host batch (the loader's workers run it before the transfer)."""
        if self.host is None or not batch.num_rows:
            return batch
        from .cpu import CpuExecutor, _host_arrays

        lengths, values, weights = CpuExecutor.run_level(self.host, batch.num_rows, *_host_arrays(batch.sparse), None)
        return replace(batch, sparse=KeyedJagged(batch.sparse.keys, lengths, values, weights))

    def describe(self) -> str:
        lines = [
            f"Plan on {self.device}: {len(self.input_schema)} -> {len(self.output_schema)} features, "
            f"{self.launches} launches per batch",
            f"  host stage: {'none' if self.host is None else f'{int((self.host.kind != S_COPY).sum())} list ops'}",
            f"  dense pass: {len(self.dense.src)} programs ({self.dense.num_ids} make ids)",
        ]
        for i, level in enumerate(self.levels):
            lines.append(f"  sparse level {i}: {len(level.kind)} apps{' (identity, skipped)' if level.identity else ''}")
        if self.derived is not None:
            lines.append(f"  dense pass 2: {len(self.derived.src)} programs over OverlapCount outputs")
        if self.images is not None:
            lines.append(f"  image stage (DALI): {[c.out for c in self.images.chains]}")
        if self.materialized:
            lines.append(f"  read, not computed (materialized): {list(self.materialized)}")
        return "\n".join(lines)


def compile(pipeline, schema: Schema, device: str = "cpu", host_stage: bool | None = None) -> Plan:
    """Compile `pipeline` for `schema` on `device` ("cpu", "reference", "cuda", "cuda:N", "auto").

    Args:
        host_stage: run data-shrinking ops (Truncate, SortByScore of the batch's own lists) as
            a separate host stage. None: only for a GPU, where it cuts the bytes that cross PCIe;
            on the CPU alone it would be an extra copy, so they fuse into the sparse levels.
            Loader workers ask for it to shrink slabs before they travel.

    An op whose output `schema` stores with matching provenance (see `gp.materialize`)
    is not run: the plan reads the stored column, and that op's inputs need not be in `schema`.

    Raises:
        ConfigError: unfitted ops, or a combination the plan does not support.
        BackendUnavailable: the device's executor cannot run here, or image ops without DALI.
    """
    ensure_instance(schema, Schema, "schema", "a gp.Schema, such as dataset.schema or batch.schema")
    unfitted = [str(op) for op in pipeline.ops if not op.fitted]
    if unfitted:
        raise ConfigError(f"pipeline has unfitted ops {unfitted}; call pipeline.fit(dataset) first")
    ops, read = skip_materialized(pipeline.ops, schema)
    out_schema = output_schema(ops, schema)
    chains = image_chains(ops)
    if read or chains:  # the executors run (the reference one replays) only the ops left: none
        # materialized, and no image op (those are the image stage's)
        pipeline = Pipeline([op for op in ops if not isinstance(op, IMAGE_OPS)], pipeline.input_schema)
    device = resolve_device(device)
    if host_stage is None:
        host_stage = device.startswith("cuda")
    builder = _Builder(schema, host_stage)
    for op in pipeline.ops:
        for inputs, out in op.applications():
            builder.apply(op, inputs, out)
    host, dense, levels, derived = builder.finish(out_schema)
    plan = Plan(pipeline, schema, out_schema, device, host, dense, levels, derived, materialized=tuple(read))
    plan.executor = _executor(device)
    if chains:
        from .dali import DaliImages

        plan.images = DaliImages(chains, device)
    return plan


def output_batch(schema: Schema, batch, dense, lengths, values, weights):
    """`batch` with an executor's output features (`schema`); labels, extras, inverse and requests
    carry over. weights are dropped when no output feature is scored."""
    scored = any(f.kind == SCORED for f in schema.sparse)
    sparse = KeyedJagged(tuple(f.name for f in schema.sparse), lengths, values, weights if scored else None)
    return replace(batch, dense_keys=tuple(f.name for f in schema.dense), dense=dense, sparse=sparse, schema=schema)


def stage_launches(plan: Plan) -> int:
    """Parallel stages one batch costs on the host: a dense pass, 3 per sparse level, pass 2."""
    count = 0 if plan.dense.identity else 1
    count += 3 * sum(not level.identity for level in plan.levels)
    return count + (1 if plan.derived is not None else 0)


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when a GPU and CuPy are there, else "cpu" (the choice is logged).

    Raises:
        ConfigError: device is none of "cpu", "reference", "cuda", "cuda:N" and "auto".
    """
    if device != "auto":
        if device in ("cpu", "reference") or re.fullmatch(r"cuda(:\d+)?", str(device)):
            return device
        raise ConfigError(f"device={device!r} must be 'cpu', 'reference', 'cuda', 'cuda:N' or 'auto'")
    from .cuda import available

    chosen = "cuda" if available() else "cpu"
    logging.getLogger("gpupre").info("device='auto' chose %r", chosen)
    return chosen


def _executor(device: str):
    if device == "reference":
        from .reference import ReferenceExecutor

        return ReferenceExecutor()
    if device == "cpu":
        from .cpu import CpuExecutor

        return CpuExecutor()
    from .cuda import CudaExecutor

    return CudaExecutor(device)  # "cuda" or "cuda:N": resolve_device lets no other through


# -- the builder: symbolic execution of the ops --------------------------------------------------
@dataclass
class _DenseNode:
    source: str  # "input" (pass 1) or "derived" (pass 2)
    column: int
    steps: list  # [(op, fparams, iparams, boundaries)]


@dataclass
class _App:
    kind: int
    inputs: list  # [(key, maps)]
    params: tuple = ()
    weighted: bool = False


@dataclass
class _ListNode:
    src: object  # int: an input key of the current level; _App: made in the current level
    maps: list  # pending elementwise maps [(M_*, p0, p1)]
    scored: bool


class _Builder:
    def __init__(self, schema: Schema, host_stage: bool):
        self.schema = schema
        self.nodes: dict[str, object] = {}
        for i, f in enumerate(schema.dense):
            self.nodes[f.name] = _DenseNode("input", i, [])
        self.batch_keys = [f.name for f in schema.sparse]
        self.host_apps = {
            k: _App(S_COPY, [(i, [])], weighted=schema[k].kind == SCORED) for i, k in enumerate(self.batch_keys)
        }
        self.host_active = host_stage
        self.read_keys: set[int] = set()  # level-0 keys read by an app (no host op after that)
        for i, f in enumerate(schema.sparse):
            self.nodes[f.name] = _ListNode(i, [], f.kind == SCORED)
        self.id_programs: list[_DenseNode] = []  # dense pass 1 programs that make level-0 keys
        self.levels: list[list] = [[]]  # each level's [(app, epilogue maps, OverlapCount column)]
        self.level_inputs = [len(self.batch_keys)]  # number of input keys per level
        self.level_scored: list[list[bool]] = [[self.schema[k].kind == SCORED for k in self.batch_keys]]
        self.derived_count = 0

    # -- ops ----------------------------------------------------------------------------------
    def apply(self, op, inputs, out):
        if isinstance(op, (O.FillMissing, O.Log1p, O.Clamp, O.Normalize, O.MinMax)):
            node = self.nodes[inputs[0]]
            self.nodes[out] = _DenseNode(node.source, node.column, node.steps + [_dense_step(op)])
        elif isinstance(op, O.Bucketize) or (isinstance(op, (O.Hash, O.Modulo)) and self._is_dense(inputs[0])):
            self.nodes[out] = self._dense_to_key(inputs[0], _dense_step(op), op)
        elif isinstance(op, (O.Hash, O.Modulo)):
            node = self.nodes[inputs[0]]
            maps = node.maps + [_map(op)]
            if len(maps) > MAX_MAPS:
                raise ConfigError(f"{op}: more than {MAX_MAPS} Hash/Modulo in a row on one feature; merge them")
            self.nodes[out] = _ListNode(node.src, maps, node.scored)
        elif isinstance(op, (O.Truncate, O.SortByScore)):
            self._positional(op, inputs[0], out)
        elif isinstance(op, O.NGram):
            key, maps = self._read(inputs[0])
            self.nodes[out] = _ListNode(_App(S_NGRAM, [(key, maps)], (op.n, op.num_buckets, op.salt)), [], False)
        else:  # two-input ops
            kind = PAIR_KINDS[type(op)]
            # close the level before reading either input, so both reads see the same level
            if any(isinstance(self.nodes[n], _ListNode) and isinstance(self.nodes[n].src, _App) for n in inputs):
                self._close_level()
            args = [self._read(name) for name in inputs]
            params = (op.num_buckets, op.salt) if kind == S_CROSS else ()
            app = _App(kind, args, params)
            if kind == S_OVERLAP:
                self.levels[-1].append((app, [], self.derived_count))
                self.nodes[out] = _DenseNode("derived", self.derived_count, [])
                self.derived_count += 1
            else:
                self.nodes[out] = _ListNode(app, [], False)

    def _is_dense(self, name):
        return isinstance(self.nodes[name], _DenseNode)

    def _positional(self, op, name, out):
        node = self.nodes[name]
        # On the host only if nothing else has read or shares this key yet: then shrinking it
        # first changes no other feature (and elementwise maps commute with it).
        at_host = (
            self.host_active
            and out == name
            and isinstance(node.src, int)
            and node.src < len(self.batch_keys)
            and node.src not in self.read_keys
            and self.host_apps[self.batch_keys[node.src]].kind == S_COPY
            and not any(
                isinstance(other, _ListNode) and other.src == node.src and other_name != name
                for other_name, other in self.nodes.items()
            )
        )
        kind = S_TRUNCATE if isinstance(op, O.Truncate) else S_SORT
        params = (op.max_len, op.keep == "last") if kind == S_TRUNCATE else (op.descending, -1 if op.top_k is None else op.top_k)
        if at_host:  # shrink before the transfer; elementwise maps commute with it
            key = self.batch_keys[node.src]
            self.host_apps[key] = _App(kind, [(node.src, [])], params, weighted=node.scored)
            return
        key, maps = self._read(name)
        self.nodes[out] = _ListNode(_App(kind, [(key, maps)], params, weighted=node.scored), [], node.scored)

    def _read(self, name):
        """(input key of the current level, pending maps) for a list (or dense-as-id) feature."""
        node = self.nodes[name]
        if isinstance(node, _DenseNode):
            if node.source == "derived":
                raise ConfigError(
                    f"feature {name!r} is made by OverlapCount; list ops on it are not supported "
                    "(use it as a dense feature)"
                )
            node = self._dense_to_key(name, (D_TO_ID, (0.0, 0.0), (0, 0, 0), ()), None)
            return node.src, node.maps
        if isinstance(node.src, _App):
            self._close_level()
            node = self.nodes[name]
        if self.host_active:
            self.read_keys.add(node.src)
        return node.src, list(node.maps)

    def _dense_to_key(self, name, step, op):
        node = self.nodes[name]
        if node.source == "derived":
            raise ConfigError(f"{op}: ids from OverlapCount outputs are not supported; use the count as a dense feature")
        self.id_programs.append(_DenseNode("input", node.column, node.steps + [step]))
        # ids made by dense pass 1 are extra input keys of level 0, carried to the current level
        key = len(self.batch_keys) + len(self.id_programs) - 1
        for level in range(len(self.levels) - 1):
            self.levels[level].append((_App(S_COPY, [(key, [])]), [], None))
            key = self.level_inputs[level + 1]
            self.level_inputs[level + 1] += 1
            self.level_scored[level + 1].append(False)
        return _ListNode(key, [], False)

    def _close_level(self):
        """Materialize every live list feature as an app of this level; they are the next inputs."""
        live = [(name, n) for name, n in self.nodes.items() if isinstance(n, _ListNode)]
        apps = self.levels[-1]
        scored = []
        for index, (name, node) in enumerate(live):
            apps.append((*_materialize(node), None))
            self.nodes[name] = _ListNode(index, [], node.scored)
            scored.append(node.scored)
        self.levels.append([])
        self.level_inputs.append(len(live))
        self.level_scored.append(scored)
        self.host_active = False

    # -- tables -------------------------------------------------------------------------------
    def finish(self, out_schema: Schema):
        # final level: one app per output list feature, in output order
        final = self.levels[-1]
        for f in out_schema.sparse:
            final.append((*_materialize(self.nodes[f.name]), None))
        host = _level_table([(a, [], None) for a in self.host_apps.values()], len(self.batch_keys), [
            self.schema[k].kind == SCORED for k in self.batch_keys
        ])
        if host.identity:
            host = None
        level_inputs = list(self.level_inputs)
        level_inputs[0] += len(self.id_programs)
        levels = []
        for i, apps in enumerate(self.levels):
            last = i == len(self.levels) - 1
            out_scored = [f.kind == SCORED for f in out_schema.sparse] if last else self.level_scored[i + 1]
            levels.append(_level_table(apps, level_inputs[i], out_scored, self.derived_count))

        out_dense = {f.name: i for i, f in enumerate(out_schema.dense)}
        pass1, pass2 = [], []
        for name, row in out_dense.items():
            node = self.nodes[name]
            (pass1 if node.source == "input" else pass2).append((node, row, -1))
        for i, node in enumerate(self.id_programs):
            # an id made from a dense output's own value (Bucketize(out=...) after Normalize, say)
            # is one more output of that output's program, not a second program redoing its steps
            twin = next(
                (j for j, (other, row, made) in enumerate(pass1)
                 if made == -1 and other.column == node.column and other.steps == node.steps[:-1]),
                None,
            )  # fmt: skip
            if twin is None:
                pass1.append((node, -1, i))
            else:
                pass1[twin] = (node, pass1[twin][1], i)
        dense = _dense_table(pass1, len(out_dense), len(self.id_programs))
        derived = _dense_table(pass2, len(out_dense), 0) if pass2 else None
        return host, dense, levels, derived


def _materialize(node: _ListNode) -> tuple[_App, list]:
    """(the app that makes this feature, its pending maps as the app's epilogue)."""
    if isinstance(node.src, _App):
        return node.src, node.maps
    return _App(S_COPY, [(node.src, [])], weighted=node.scored), node.maps


def _dense_step(op):
    f32 = np.float32
    if isinstance(op, O.FillMissing):
        return (D_FILL, (op.value, 0.0), (0, 0, 0), ())
    if isinstance(op, O.Log1p):
        return (D_LOG1P, (0.0, 0.0), (0, 0, 0), ())
    if isinstance(op, O.Clamp):
        return (D_CLAMP, (op.lo, op.hi), (0, 0, 0), ())
    if isinstance(op, O.Normalize):
        return (D_NORMALIZE, (op.mean, op.std), (0, 0, 0), ())
    if isinstance(op, O.MinMax):
        return (D_MINMAX, (op.min, op.max), (0, 0, 0), ())
    if isinstance(op, O.Bucketize):
        return (D_BUCKETIZE, (0.0, 0.0), (0, len(op.boundaries), int(op.right)), tuple(f32(b) for b in op.boundaries))
    if isinstance(op, O.Hash):
        return (D_HASH, (0.0, 0.0), (op.num_buckets, op.salt, 0), ())
    return (D_MODULO, (0.0, 0.0), (op.n, 0, 0), ())


def _map(op):
    return (M_HASH, op.num_buckets, op.salt) if isinstance(op, O.Hash) else (M_MODULO, op.n, 0)


def _dense_table(programs, num_dense, num_ids) -> DenseProgram:
    p = len(programs)
    s = max([len(node.steps) for node, _, _ in programs] + [1])
    steps = np.zeros((p, s), np.int32)
    fparams = np.zeros((p, s, 2), np.float32)
    iparams = np.zeros((p, s, 3), np.int64)
    boundaries: list = []
    for i, (node, _, _) in enumerate(programs):
        for j, (code, fp, ip, bounds) in enumerate(node.steps):
            steps[i, j] = code
            with np.errstate(over="ignore"):  # a Clamp bound beyond float32 is +-inf, which clamps as it would
                fparams[i, j] = fp
            iparams[i, j] = ip
            if code == D_BUCKETIZE:
                iparams[i, j, 0] = len(boundaries)
                boundaries.extend(bounds)
    return DenseProgram(
        np.array([node.column for node, _, _ in programs], np.int32),
        steps,
        fparams,
        iparams,
        np.array(boundaries, np.float32),
        np.array([row for _, row, _ in programs], np.int32),
        np.array([idx for _, _, idx in programs], np.int32),
        num_dense,
        num_ids,
    )


def _level_table(apps, num_inputs, out_scored, num_derived=0) -> SparseLevel:
    a_count = len(apps)
    kind = np.zeros(a_count, np.int32)
    a = np.full(a_count, -1, np.int32)
    b = np.full(a_count, -1, np.int32)
    params = np.zeros((a_count, 3), np.int64)
    maps = np.zeros((a_count, 3, MAX_MAPS), np.int32)
    map_params = np.zeros((a_count, 3, MAX_MAPS, 2), np.int64)
    weighted = np.zeros(a_count, np.bool_)
    out = np.zeros(a_count, np.int32)
    next_key = 0
    for i, (app, epilogue, derived_column) in enumerate(apps):
        kind[i] = app.kind
        for slot, (key, key_maps) in enumerate(app.inputs):
            (a if slot == 0 else b)[i] = key
            _fill_maps(maps[i, slot], map_params[i, slot], key_maps)
        _fill_maps(maps[i, 2], map_params[i, 2], epilogue)
        params[i, : len(app.params)] = app.params
        weighted[i] = app.weighted
        if app.kind == S_OVERLAP:
            out[i] = derived_column
        else:
            out[i] = next_key
            next_key += 1
    return SparseLevel(
        kind, a, b, params, maps, map_params, weighted, out, num_inputs, next_key, num_derived, any(out_scored)
    )


def _fill_maps(codes, params, maps):
    for j, (code, p0, p1) in enumerate(maps):
        codes[j] = code
        params[j] = (p0, p1)


def _check_batch(plan: Plan, batch) -> None:
    """The batch holds what the plan was compiled for, with consistent offsets."""
    ensure_instance(batch, Batch, "batch", "a gp.Batch, such as dataset.read(unit)")
    schema = plan.input_schema
    expected_dense = tuple(f.name for f in schema.dense)
    expected_sparse = tuple(f.name for f in schema.sparse)
    expected_images = sorted(f.name for f in schema.images)
    if batch.dense_keys != expected_dense or batch.sparse.keys != expected_sparse or sorted(batch.images) != expected_images:
        if batch.requests is not None:  # the plan of a plain batch's schema, given a de-duplicated batch
            raise DataError(
                "the batch is de-duplicated (its requests' user features are in batch.requests, once each), and this "
                "plan is for plain batches: compile the pipeline with dedup=True (pipeline.compile(schema, device, "
                "dedup=True)), or run pipeline(batch), or pass batch.expand() (or read gp.Dataset(path, expand=True))"
            )
        raise DataError(
            f"batch features (dense {list(batch.dense_keys)}, sparse {list(batch.sparse.keys)}, images "
            f"{sorted(batch.images)}) differ from the plan's (dense {list(expected_dense)}, sparse "
            f"{list(expected_sparse)}, images {expected_images}); compile the pipeline for this batch's schema"
        )
    lengths, weights = batch.sparse.lengths, batch.sparse.weights
    if len(lengths) != len(expected_sparse) * batch.num_rows:
        raise DataError(f"batch lengths hold {len(lengths)} entries for {len(expected_sparse)} keys x {batch.num_rows} rows")
    if tuple(batch.dense.shape) != (len(expected_dense), batch.num_rows):
        raise DataError(f"batch dense matrix is {tuple(batch.dense.shape)} for {len(expected_dense)} features x {batch.num_rows} rows")
    if any(f.kind == SCORED for f in schema.sparse) and weights is None:
        raise DataError("the schema has scored features but the batch has no scores (sparse.weights is None)")
    if weights is not None and len(weights) != len(batch.sparse.values):
        raise DataError(f"batch scores (sparse.weights) hold {len(weights)} entries for {len(batch.sparse.values)} ids; give one per id")
    if getattr(lengths, "is_cuda", False):
        return  # device batches: the kernels check the lengths, without a sync here
    lengths = np.asarray(lengths)
    if len(lengths) and lengths.min() < 0:
        raise DataError(f"batch lengths hold negative entries (the first at {int(np.argmin(lengths >= 0))}); lengths must be >= 0")
    check_total(int(lengths.sum()), len(batch.sparse.values))


MAX_ROW_IDS = 2**31 - 1  # lengths are int32


def cross_too_long(ids: int, where: str) -> DataError:
    """The error of a Cross that would make `ids` ids in one row (`where`: which), over MAX_ROW_IDS."""
    return DataError(f"a Cross ({where}) would make {ids} ids in a row, more than 2**31 - 1; Truncate its inputs first")


def check_total(total: int, values: int) -> None:
    """The lengths of a batch sum to its number of values (device executors check on the device)."""
    if total != values:
        raise DataError(f"batch lengths sum to {total} but there are {values} values; the batch is corrupt")
