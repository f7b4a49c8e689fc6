"""Image ops: validation, chains, DALI's decode against Pillow's, crops and flips, errors."""

import builtins
import io

import numpy as np
import pyarrow as pa
import pytest
from image_data import decode_ids, encode, picture
from PIL import Image

import gpupre as gp
from gpupre.transforms.images import RandomResizedCrop, uniform

pytest.importorskip("nvidia.dali", reason="the dali extra is part of `make test`")


def _batch(images, row_ids=None):
    """A host batch of encoded images (and row ids as a pass-through column)."""
    columns = {"thumb": pa.array(images, pa.binary())}
    extras = ()
    if row_ids is not None:
        columns["row_id"] = pa.array(np.asarray(row_ids, np.int64))
        extras = ("row_id",)
    schema = gp.Schema((gp.Feature("thumb", "image"),), (), extras)
    return gp.Batch.from_arrow(pa.table(columns), schema)


def _run(ops, batch, name="thumb"):
    return gp.Pipeline(ops)(batch).images[name]


@pytest.fixture(scope="module")
def pictures():
    """12 pictures of 30 x 40, as (pixels, encoded): JPEG, every third a PNG."""
    pixels = [picture(i, 30, 40) for i in range(12)]
    return pixels, [encode(p, "PNG" if i % 3 == 0 else "JPEG") for i, p in enumerate(pixels)]


# -- specs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda: gp.Resize("t", size=0),
        lambda: gp.Resize("t", size=(3, 4, 5)),
        lambda: gp.RandomResizedCrop("t", scale=(0.5, 0.2)),
        lambda: gp.RandomResizedCrop("t", scale=(0.0, 1.0)),
        lambda: gp.RandomResizedCrop("t", ratio=(0.0, 1.0)),
        lambda: gp.RandomResizedCrop("t", seed=2**64),
        lambda: gp.RandomFlip("t", probability=1.5),
        lambda: gp.NormalizeImage("t", std=(1.0, 0.0, 1.0)),
        lambda: gp.NormalizeImage("t", mean=(0.5, 0.5)),
        lambda: gp.Resize("t", size=224.0),
        lambda: gp.Resize("t", size=None),
        lambda: gp.RandomResizedCrop("t", scale=("a", "b")),
        lambda: gp.RandomResizedCrop("t", scale=None),
        lambda: gp.RandomResizedCrop("t", ratio=(1.0, float("inf"))),
        lambda: gp.NormalizeImage("t", mean=None),
        lambda: gp.NormalizeImage("t", mean=("r", "g", "b")),
    ],
)
def test_bad_parameters_are_config_errors(make):
    with pytest.raises(gp.ConfigError):
        make()


def test_numpy_sizes_are_taken_as_ints():
    assert gp.Resize("t", size=[np.int64(32), np.int32(24)]).size == (32, 24)


def test_image_ops_save_and_load_as_json():
    pipe = gp.Pipeline([
        gp.RandomResizedCrop("thumb", size=(8, 12), scale=(0.2, 0.9), seed=3),
        gp.RandomFlip("thumb", probability=0.25),
        gp.NormalizeImage("thumb", mean=(0.4, 0.5, 0.6), std=0.2),
        gp.Resize("other", size=16),
    ])  # fmt: skip
    loaded = gp.Pipeline.from_json(pipe.to_json())
    assert loaded == pipe and loaded.ops[0].size == (8, 12) and loaded.ops[2].std == (0.2, 0.2, 0.2)


@pytest.mark.parametrize(
    "ops, message",
    [
        ([gp.RandomFlip("thumb")], "no Resize or RandomResizedCrop"),
        ([gp.Resize("thumb", 8), gp.Resize("thumb", 16)], "comes first and once"),
        ([gp.Resize("thumb", 8), gp.RandomFlip("thumb"), gp.RandomFlip("thumb")], "already has a RandomFlip"),
        ([gp.Resize("x", 8)], "takes image features"),
        ([gp.FillMissing("thumb")], "takes dense features"),
    ],
)
def test_chains_that_cannot_run_are_config_errors(ops, message):
    schema = gp.Schema((gp.Feature("thumb", "image"), gp.Feature("x", "dense")))
    with pytest.raises(gp.ConfigError, match=message):
        gp.Pipeline(ops).compile(schema)


def test_without_dali_image_ops_say_how_to_install_it(monkeypatch):
    real = builtins.__import__

    def no_dali(name, *args, **kwargs):
        if name.startswith("nvidia.dali"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dali)
    schema = gp.Schema((gp.Feature("thumb", "image"),))
    with pytest.raises(gp.BackendUnavailable, match=r"pip install 'gpupre\[dali\]'"):
        gp.Pipeline([gp.Resize("thumb", 8)]).compile(schema)


# -- pixels -----------------------------------------------------------------------------------------
def test_decoded_pixels_equal_pillows_decode(pictures):
    _, encoded = pictures
    out = _run([gp.Resize("thumb", size=(30, 40))], _batch(encoded))  # its own size: decode only
    assert out.shape == (12, 3, 30, 40) and out.dtype == np.uint8
    for i, data in enumerate(encoded):
        pillow = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).transpose(2, 0, 1).astype(int)
        difference = np.abs(out[i].astype(int) - pillow)
        if i % 3 == 0:  # PNG is lossless: the same pixels
            assert difference.max() == 0
        else:  # two JPEG decoders may differ by a level or two (IDCT rounding)
            assert difference.max() <= 2 and difference.mean() < 0.5


def test_resize_then_normalize_and_flip(pictures):
    _, encoded = pictures
    batch = _batch(encoded)
    plain = _run([gp.Resize("thumb", size=(15, 20))], batch)
    mean, std = (0.5, 0.25, 0.1), (0.2, 0.3, 0.4)
    normalized = _run([gp.Resize("thumb", size=(15, 20)), gp.NormalizeImage("thumb", mean=mean, std=std)], batch)
    expected = (plain / np.float32(255) - np.array(mean, np.float32)[:, None, None]) / np.array(std, np.float32)[:, None, None]
    assert normalized.dtype == np.float32
    np.testing.assert_allclose(normalized, expected, rtol=1e-5, atol=1e-5)
    flipped = _run([gp.Resize("thumb", size=(15, 20)), gp.RandomFlip("thumb", probability=1.0)], batch)
    np.testing.assert_array_equal(flipped, plain[..., ::-1])
    kept = _run([gp.Resize("thumb", size=(15, 20)), gp.RandomFlip("thumb", probability=0.0)], batch)
    np.testing.assert_array_equal(kept, plain)


def test_a_second_view_with_out_leaves_the_first(pictures):
    _, encoded = pictures
    batch = gp.Pipeline([gp.Resize("thumb", size=8, out="small"), gp.Resize("thumb", size=(30, 40))])(_batch(encoded))
    assert batch.images["small"].shape == (12, 3, 8, 8) and batch.images["thumb"].shape == (12, 3, 30, 40)
    assert [f.name for f in batch.schema.images] == ["thumb", "small"]
    crops = gp.Pipeline([gp.RandomResizedCrop("thumb", 8, out="a"), gp.RandomResizedCrop("thumb", 8, out="b")])(_batch(encoded))
    assert not np.array_equal(crops.images["a"], crops.images["b"])  # same seed, two views: two crops


def test_a_crop_of_the_whole_image_is_a_resize(pictures):
    _, encoded = pictures
    batch = _batch(encoded)
    whole = RandomResizedCrop("thumb", size=(15, 20), scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3))  # the pictures' 40/30
    np.testing.assert_allclose(
        _run([whole], batch).astype(int), _run([gp.Resize("thumb", size=(15, 20))], batch).astype(int), atol=1
    )


def test_crops_are_deterministic_under_a_seed_differ_across_seeds_and_follow_the_row(pictures):
    _, encoded = pictures
    batch = _batch(encoded)
    assert batch.row_keys is None  # keyed by position in the batch
    batch.row_keys = np.arange(12, dtype=np.int64) * 7919  # as a reader keys them: per row, not position

    def crops(seed, b=batch):
        return _run([gp.RandomResizedCrop("thumb", size=(12, 12), scale=(0.1, 0.5), seed=seed)], b)

    first = crops(1)
    np.testing.assert_array_equal(first, crops(1))
    assert not np.array_equal(first, crops(2))
    order = np.random.default_rng(0).permutation(12)
    np.testing.assert_array_equal(crops(1, batch.take(order)), first[order])  # same row, same crop
    assert (decode_ids(first) == np.arange(12)).all()  # a crop of row i is still row i's picture


def test_crops_of_tiny_images_keep_at_least_one_pixel():
    rows = 200  # enough draws that some windows cover under half a pixel of each side
    for height, width in ((1, 1), (2, 2), (3, 3), (1, 5)):
        pixels = np.full((height, width, 3), (200, 40, 90), np.uint8)
        encoded = [encode(pixels, fmt) for fmt in ("PNG", "JPEG")] * (rows // 2)
        out = _run([gp.RandomResizedCrop("thumb", size=4)], _batch(encoded))
        assert out.shape == (rows, 3, 4, 4)
        np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), (200, 40, 90), atol=3)


def test_crop_windows_follow_scale_and_ratio():
    op = RandomResizedCrop("t", scale=(0.2, 0.6), ratio=(0.5, 2.0), seed=5)
    windows = op.windows(np.arange(20_000, dtype=np.int64))
    area, ratio, x, y = windows.T
    assert area.min() >= 0.2 and area.max() <= 0.6 and ratio.min() >= 0.5 and ratio.max() <= 2.0
    assert abs(np.log(ratio).mean()) < 0.02  # log-uniform: symmetric about 1
    assert 0.0 <= min(x.min(), y.min()) and max(x.max(), y.max()) < 1.0 and abs(x.mean() - 0.5) < 0.01
    flips = gp.RandomFlip("t", probability=0.3).flips(np.arange(20_000, dtype=np.int64))
    assert abs(flips.mean() - 0.3) < 0.015
    # the flip's draws are not the crop's: with equal seeds they are uncorrelated
    assert abs(np.corrcoef(uniform(np.arange(20_000), 0, 4), uniform(np.arange(20_000), 0, 2))[0, 1]) < 0.03


# -- errors -----------------------------------------------------------------------------------------
def test_corrupt_bytes_are_a_data_error_naming_the_row(pictures):
    _, encoded = pictures
    broken = list(encoded)
    broken[7] = b"\xff\xd8\xff" + b"not a jpeg" * 20
    with pytest.raises(gp.DataError, match=r"image feature 'thumb': row 7 of the batch \(row_id=107\) cannot be decoded"):
        gp.Pipeline([gp.Resize("thumb", 8)])(_batch(broken, np.arange(100, 112)))
    empty = list(encoded)
    empty[3] = b""
    with pytest.raises(gp.DataError, match="row 3 of the batch holds no bytes"):
        gp.Pipeline([gp.RandomResizedCrop("thumb", 8)])(_batch(empty))
    pipe = gp.Pipeline([gp.Resize("thumb", 8)])
    assert pipe(_batch(encoded)).images["thumb"].shape == (12, 3, 8, 8)  # still works after a failure


def test_a_null_image_is_a_data_error_when_read():
    table = pa.table({"thumb": pa.array([b"x", None], pa.binary())})
    with pytest.raises(gp.DataError, match="image feature 'thumb' is null in row 1"):
        gp.Batch.from_arrow(table, gp.Schema((gp.Feature("thumb", "image"),)))


def test_empty_batches_give_empty_images():
    out = _run([gp.Resize("thumb", (4, 6)), gp.NormalizeImage("thumb")], _batch([]))
    assert out.shape == (0, 3, 4, 6) and out.dtype == np.float32
