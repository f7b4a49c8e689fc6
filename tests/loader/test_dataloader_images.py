"""DataLoader with image features: rows aligned through shuffle and resume, crops per row and epoch."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from image_data import decode_ids
from resume import interrupted

import gpupre as gp

pytest.importorskip("nvidia.dali", reason="the dali extra is part of `make test`")

CROP = [gp.RandomResizedCrop("thumb", size=(12, 16), scale=(0.2, 0.8), seed=1), gp.RandomFlip("thumb")]


@pytest.fixture(scope="module")
def ds(image_file):
    return gp.Dataset(image_file, passthrough="row_id")  # 120 rows in 4 units of 30


def _loader(ds, **kw):
    kw = {"batch_size": 16, "device": "cpu", "num_workers": 0, "read_batch_size": 8, "pipeline": gp.Pipeline(CROP), **kw}
    return gp.DataLoader(ds, **kw)


def _by_row(batches) -> dict:
    """{row_id: its crop}, checking that every image, label and dense value belongs to its row."""
    crops = {}
    for b in batches:
        ids = np.asarray(b.extras["row_id"])
        images = np.asarray(b.images["thumb"])
        assert images.shape == (b.num_rows, 3, 12, 16) and images.dtype == np.uint8
        np.testing.assert_array_equal(decode_ids(images), ids)
        np.testing.assert_array_equal(np.asarray(b.labels), ids)
        np.testing.assert_array_equal(np.asarray(b.dense[0]), ids)
        crops.update(zip(ids.tolist(), images))
    return crops


@pytest.mark.parametrize("workers", [0, 2])
def test_images_stay_with_their_rows_through_shuffle(ds, workers):
    loader = _loader(ds, num_workers=workers, shuffle=True, seed=3)
    batches = list(loader)
    loader.close()
    crops = _by_row(batches)
    assert sorted(crops) == list(range(120))
    ids = [int(i) for b in batches for i in np.asarray(b.extras["row_id"])]
    assert ids != sorted(ids)


def test_a_row_gets_the_same_crop_whatever_the_workers_and_batching(ds):
    a = _by_row(list(_loader(ds, shuffle=True, seed=3)))
    loader = _loader(ds, shuffle=True, seed=3, num_workers=2, batch_size=7, read_batch_size=5)
    b = _by_row(list(loader))
    loader.close()
    assert all(np.array_equal(a[i], b[i]) for i in range(120))


def test_crops_change_with_the_epoch_and_the_seed(ds):
    loader = _loader(ds, shuffle=True, seed=3)
    first, second = _by_row(list(loader)), _by_row(list(loader))
    other_seed = _by_row(list(_loader(ds, shuffle=True, seed=4)))
    differ = [sum(not np.array_equal(x[i], first[i]) for i in range(120)) for x in (second, other_seed)]
    assert min(differ) > 100  # each row is cropped anew (a few may land on the same window)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_delivers_every_image_once_with_the_same_crops(ds, workers):
    def factory():
        return _loader(ds, num_workers=workers, shuffle=True, seed=5)

    whole, head, rest, _ = interrupted(factory, midpoint=3)
    assert not set(head) & set(rest) and sorted(head + rest) == sorted(whole)
    reference = _by_row(list(factory()))
    first = factory()
    it = iter(first)
    crops = _by_row([next(it) for _ in range(3)])
    state = first.state_dict()
    del it
    first.close()
    second = factory()
    second.load_state_dict(state)
    crops.update(_by_row(list(second)))
    second.close()
    assert sorted(crops) == list(range(120))
    assert all(np.array_equal(crops[i], reference[i]) for i in range(120))


def test_without_image_ops_the_encoded_bytes_pass_through(ds, image_file):
    batches = list(gp.DataLoader(ds, batch_size=50, device="cpu", num_workers=2, shuffle=True))
    stored = pq.read_table(image_file).column("thumb").to_pylist()
    for b in batches:
        assert isinstance(b.images["thumb"], pa.Array)
        assert b.images["thumb"].to_pylist() == [stored[int(i)] for i in np.asarray(b.extras["row_id"])]


def test_a_corrupt_image_names_its_unit_and_row(tmp_path, image_file):
    table = pq.read_table(image_file)
    images = table.column("thumb").to_pylist()
    images[40] = b"\x89PNG\r\n\x1a\n" + b"broken" * 10
    path = str(tmp_path / "broken.parquet")
    gp.storage.write_table(table.set_column(0, "thumb", pa.array(images, pa.binary())), path, row_group_rows=30)
    loader = _loader(gp.Dataset(path, passthrough="row_id"), num_workers=2)
    with pytest.raises(gp.DataError, match=r"row group 1.*row_id=40"):
        list(loader)
    loader.close()
    skipping = _loader(gp.Dataset(path, passthrough="row_id"), num_workers=2, on_bad_unit="skip")
    crops = _by_row(list(skipping))
    skipping.close()
    # the unit's rows from the slab that holds the bad image on (slabs of 8: rows 38..45, ...)
    assert sorted(crops) == [i for i in range(120) if not 38 <= i < 60]


def test_fitting_beside_image_ops_leaves_the_images_unread(image_file, monkeypatch):
    read, from_arrow = [], gp.Batch.from_arrow.__func__
    monkeypatch.setattr(gp.Batch, "from_arrow", classmethod(lambda cls, table, *a, **k: read.append(table.column_names) or from_arrow(cls, table, *a, **k)))
    ds = gp.Dataset(image_file)
    pipe = gp.Pipeline([*CROP, gp.Normalize("x")]).fit(ds, progress=False)
    assert pipe.ops[-1].mean == pytest.approx(59.5)  # x is 0..119
    assert len(read) == 4 and not any("thumb" in columns for columns in read)  # every unit, no image bytes
    monkeypatch.undo()
    batch = pipe(ds.read(ds.units()[0]))
    assert batch.images["thumb"].shape == (30, 3, 12, 16) and abs(float(batch.dense.mean())) < 2
