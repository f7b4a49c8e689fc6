"""DataLoader over de-dup tables: batches of rows that carry their requests, every row once."""

import numpy as np
import pytest
from resume import check_resume, epoch_ids
from transforms.helpers import assert_same_by_name, to_host

import gpupre as gp
from gpupre.loader._slabs import Slab, stage, to_shared


def _loader(path, **kw):
    ds = gp.Dataset(path, passthrough=("request_id", "item_id"))
    kw = {"batch_size": 32, "device": "cpu", "num_workers": 0, "read_batch_size": 12, **kw}
    return gp.DataLoader(ds, **kw)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("shuffle", [False, True])
def test_every_impression_once_with_each_request_staged_once_per_batch(dedup_tables, workers, shuffle):
    loader = _loader(dedup_tables[0], num_workers=workers, shuffle=shuffle)
    batches = list(loader)
    loader.close()
    total = loader.dataset.num_rows
    assert [b.num_rows for b in batches] == [32] * (total // 32) + ([total % 32] if total % 32 else [])
    ids = epoch_ids(batches, "item_id")
    assert sorted(ids) == sorted(epoch_ids([loader.dataset.read(u) for u in loader.dataset.units()], "item_id"))
    for b in batches:
        requests = b.requests.extras["request_id"].numpy()
        assert len(set(requests.tolist())) == len(requests)  # no request twice in a batch
        assert (b.expand().extras["request_id"].numpy() == b.extras["item_id"].numpy() // 100).all()
    assert (ids == sorted(ids)) != shuffle


def test_the_plan_runs_on_requests_once_and_matches_whole_rows(dedup_tables):
    ds = gp.Dataset(dedup_tables[0], passthrough=("item_id",))
    users, items = ["user_dense_0", "user_dense_1"], ["item_dense_0"]
    pipe = gp.Pipeline([gp.FillMissing(users + items), gp.Normalize(users + items), gp.Hash(["user_list_0", "item_list_1"], 97),
                        gp.Truncate(["user_list_1"], 2)]).fit(ds, progress=False)  # fmt: skip
    loader = gp.DataLoader(ds, batch_size=40, pipeline=pipe, device="cpu", num_workers=0, read_batch_size=16)
    got = gp.Batch.concat([to_host(b).expand() for b in loader])
    expanded = gp.Dataset(dedup_tables[0], passthrough=("item_id",), expand=True)
    want = gp.Batch.concat([pipe(expanded.read(u)) for u in expanded.units()])
    assert_same_by_name(got, want)


def test_resume_in_the_middle_of_a_dedup_epoch(dedup_tables):
    check_resume(lambda: _loader(dedup_tables[0], shuffle=True, num_workers=2), midpoint=4, column="item_id")


def test_staging_renumbers_the_inverse_to_the_requests_gathered(dedup_tables):
    ds = gp.Dataset(dedup_tables[0], passthrough=("request_id", "item_id"))
    slab = Slab(to_shared(ds.read(ds.units()[0])), ds.schema)
    other = ds.read(ds.units()[1])
    staged = stage([(slab, 3, 9), (other, 0, 5)], ds.schema).batch()
    want = gp.Batch.concat([slab.batch.rows(3, 9), other.rows(0, 5)])
    assert staged.inverse.tolist() == want.inverse.tolist()
    assert staged.requests.extras["request_id"].tolist() == want.requests.extras["request_id"].tolist()
    assert_same_by_name(staged.expand(), want.expand(), rtol=0)
    del staged
    slab.release()
