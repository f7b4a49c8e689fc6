"""Image ops on a GPU: DALI's mixed decoder against its CPU pipeline, and in the loader."""

import numpy as np
import pytest
import torch
from image_data import decode_ids

import gpupre as gp

pytest.importorskip("nvidia.dali", reason="install the gpu extra (it includes nvidia-dali-cuda130)")

OPS = [gp.RandomResizedCrop("thumb", size=(12, 16), scale=(0.2, 0.8), seed=1), gp.RandomFlip("thumb")]


@pytest.fixture(scope="module")
def ds(image_file):
    return gp.Dataset(image_file, passthrough="row_id")


def test_the_mixed_decoder_matches_the_cpu_pipeline(ds):
    for ops in (OPS, [gp.Resize("thumb", (20, 28)), gp.NormalizeImage("thumb", (0.5,) * 3, (0.2,) * 3)]):
        pipe = gp.Pipeline(ops)
        for unit in ds.units():
            batch = ds.read(unit)
            cpu = pipe.compile(ds.schema, "cpu").run(batch).images["thumb"]
            gpu = pipe.compile(ds.schema, "cuda").run(batch).images["thumb"]
            assert gpu.is_cuda and gpu.dtype == torch.from_numpy(cpu).dtype and tuple(gpu.shape) == cpu.shape
            level = 1.0 if cpu.dtype == np.uint8 else 1 / (255 * 0.2)  # one pixel level, in output units
            difference = np.abs(gpu.cpu().numpy().astype(np.float64) - cpu.astype(np.float64)) / level
            # nvJPEG and libjpeg-turbo (and the two resize kernels) may differ by a few levels
            assert difference.max() <= 4 and difference.mean() < 0.5


def test_the_loader_delivers_images_on_the_device_with_their_rows(ds):
    loader = gp.DataLoader(ds, batch_size=16, pipeline=gp.Pipeline(OPS), device="cuda", num_workers=2,
                           read_batch_size=8, shuffle=True, seed=3)  # fmt: skip
    seen = []
    for b in loader:
        assert b.images["thumb"].is_cuda and b.dense.is_cuda
        ids = np.asarray(b.extras["row_id"].cpu())
        np.testing.assert_array_equal(decode_ids(b.images["thumb"]), ids)
        seen.extend(ids.tolist())
    loader.close()
    assert sorted(seen) == list(range(120))
