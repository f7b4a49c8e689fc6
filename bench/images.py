"""Images benchmark: content features decoded and augmented, in images per second.

Data: IMAGES synthetic photos (320 x 256 JPEGs of about 30 KB: gradients, shapes and noise) in a
Parquet binary column beside a label. The augmentation: random resized crop to 224 x 224, random
flip, ImageNet normalization, in batches of 128. Contenders, on the same cores:
- gpupre: gp.DataLoader with the image ops, DALI's CPU pipeline in its worker processes;
- pillow: torch's DataLoader over a map-style dataset of the same Parquet column, Pillow decoding,
  cropping (the same windows' rules) and resizing (bilinear) in its workers, numpy normalizing;
- gpupre on a GPU (when there is one): the same loader with device="cuda", DALI's mixed decoder.
Correctness first: gpupre's decode equals Pillow's within JPEG decoders' tolerance. Each contender
runs one epoch to warm up (worker start, DALI's build) that is reported apart, then `repeats`
epochs whose median is the figure.
"""

from __future__ import annotations

import io
import math
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import gpupre as gp

from .common import markdown_table, repeats_main, save, targets_table

DATA_DIR = os.path.join(os.path.dirname(__file__), "data")
IMAGES, HEIGHT, WIDTH, SIZE, BATCH = 2048, 256, 320, 224, 128
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def dataset(images: int = IMAGES, data_dir: str = DATA_DIR) -> str:
    """The Parquet file of `images` synthetic photos, written once."""
    from PIL import Image

    path = os.path.join(data_dir, f"images-{images}.parquet")
    if os.path.exists(path):
        return path
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    encoded = []
    for _ in range(images):
        base = rng.uniform(0, 255, 3)[None, None] + rng.uniform(-0.5, 0.5, 3)[None, None] * (x + y)[..., None]
        cx, cy, r = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT), rng.uniform(20, 90)
        disc = ((x - cx) ** 2 + (y - cy) ** 2 < r * r)[..., None] * rng.uniform(-80, 80, 3)[None, None]
        pixels = np.clip(base + disc + rng.normal(0, 12, (HEIGHT, WIDTH, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=85)
        encoded.append(buffer.getvalue())
    table = pa.table({"thumb": pa.array(encoded, pa.binary()), "label": pa.array(rng.random(images), pa.float32()),
                      "row_id": pa.array(np.arange(images))})  # fmt: skip
    os.makedirs(data_dir, exist_ok=True)
    schema = gp.Schema((gp.Feature("thumb", "image"),), ("label",), ("row_id",))
    gp.storage.write_table(table, path + ".tmp", schema=schema, row_group_rows=256)
    os.replace(path + ".tmp", path)
    return path


def pipeline() -> gp.Pipeline:
    return gp.Pipeline([gp.RandomResizedCrop("thumb", size=SIZE), gp.RandomFlip("thumb"), gp.NormalizeImage("thumb", MEAN, STD)])


# -- the Pillow contender -----------------------------------------------------------------------------
class PillowImages:
    """A map-style torch dataset: row i of the Parquet column, augmented with Pillow in the worker."""

    def __init__(self, path: str, seed: int = 0):
        self.path, self.seed, self.column = path, seed, None
        self.length = pq.ParquetFile(path).metadata.num_rows

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        import torch
        from PIL import Image

        if self.column is None:  # each worker reads the column once
            self.column = pq.read_table(self.path, columns=["thumb", "label"])
        rng = np.random.default_rng([self.seed, i])
        image = Image.open(io.BytesIO(self.column.column("thumb")[i].as_py())).convert("RGB")
        w, h = image.size
        area = rng.uniform(0.08, 1.0) * w * h
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = min(w, round(math.sqrt(area * ratio))), min(h, round(math.sqrt(area / ratio)))
        x, y = int(rng.uniform() * (w - cw + 1)), int(rng.uniform() * (h - ch + 1))
        image = image.crop((x, y, x + cw, y + ch)).resize((SIZE, SIZE), Image.BILINEAR)
        if rng.uniform() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        pixels = (np.asarray(image, np.float32) / 255 - np.float32(MEAN)) / np.float32(STD)
        return torch.from_numpy(pixels.transpose(2, 0, 1).copy()), self.column.column("label")[i].as_py()


# -- the benchmark ------------------------------------------------------------------------------------
def check_decode(path: str) -> float:
    """Max difference of gpupre's decode from Pillow's over the first batch (raises past 2 levels)."""
    from PIL import Image

    ds = gp.Dataset(path)
    batch = ds.read(ds.units()[0])
    ours = gp.Pipeline([gp.Resize("thumb", (HEIGHT, WIDTH))])(batch).images["thumb"].astype(int)
    pillow = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in batch.images["thumb"].to_pylist()])
    worst = int(np.abs(ours - pillow.transpose(0, 3, 1, 2).astype(int)).max())
    if worst > 2:
        raise AssertionError(f"gpupre's decode differs from Pillow's by {worst} levels")
    return worst


def epochs(make, repeats: int) -> dict:
    """Images/s of the first epoch and the median of `repeats` more, from one loader."""
    loader = make()
    times = []
    try:
        for _ in range(repeats + 1):
            start, images = time.perf_counter(), 0
            for batch in loader:
                pixels = batch.images["thumb"] if isinstance(batch, gp.Batch) else batch[0]
                assert tuple(pixels.shape[1:]) == (3, SIZE, SIZE)
                images += len(pixels)
            times.append(time.perf_counter() - start)
            assert images == IMAGES, f"an epoch delivered {images} images, not {IMAGES}"
    finally:
        getattr(loader, "close", lambda: None)()
    return {"first_images_per_s": IMAGES / times[0], "images_per_s": IMAGES / float(np.median(times[1:])), "times_s": times}


def run(repeats: int = 3) -> dict:
    import torch

    path = dataset()
    workers = max(1, min(4, os.cpu_count() or 1))
    difference = check_decode(path)
    ds = gp.Dataset(path, label="label")
    contenders = {
        "gpupre": lambda: gp.DataLoader(ds, batch_size=BATCH, pipeline=pipeline(), device="cpu", num_workers=workers,
                                        read_batch_size=64, shuffle=True),  # fmt: skip
        "pillow": lambda: torch.utils.data.DataLoader(PillowImages(path), batch_size=BATCH, shuffle=True,
                                                      num_workers=workers, persistent_workers=True),  # fmt: skip
    }
    if torch.cuda.is_available():
        contenders["gpupre_gpu"] = lambda: gp.DataLoader(ds, batch_size=BATCH, pipeline=pipeline(), device="cuda",
                                                         num_workers=workers, read_batch_size=64, shuffle=True)  # fmt: skip
    results = [{"contender": name, **epochs(make, repeats)} for name, make in contenders.items()]
    by_name = {r["contender"]: r["images_per_s"] for r in results}
    targets = [{"name": "gpupre (DALI CPU) vs Pillow in torch workers, images/s", "value": by_name["gpupre"] / by_name["pillow"],
                "goal": 1.0, "met": by_name["gpupre"] >= by_name["pillow"]}]  # fmt: skip
    if "gpupre_gpu" in by_name:
        targets.append({"name": "gpupre (DALI mixed decoder) vs Pillow, images/s", "value": by_name["gpupre_gpu"] / by_name["pillow"],
                        "goal": 1.0, "met": by_name["gpupre_gpu"] >= by_name["pillow"]})  # fmt: skip
    result = {
        "config": {"images": IMAGES, "source": f"{WIDTH}x{HEIGHT} JPEG", "size": SIZE, "batch_size": BATCH,
                   "workers": workers, "repeats": repeats, "decode_max_difference_vs_pillow": difference},  # fmt: skip
        "results": results,
        "targets": targets,
    }
    result["path"] = save("images", result)
    return result


def report(result: dict) -> str:
    cfg = result["config"]
    head = (f"images: {cfg['images']} {cfg['source']} -> random resized crop {cfg['size']}, flip, normalize; "
            f"batches of {cfg['batch_size']}, {cfg['workers']} workers, median of {cfg['repeats']} epochs; "
            f"decode vs Pillow: at most {cfg['decode_max_difference_vs_pillow']} levels apart")  # fmt: skip
    columns = [("contender", "contender"), ("images_per_s", "images/s"), ("first_images_per_s", "first epoch images/s")]
    return "\n\n".join([head, markdown_table(result["results"], columns), targets_table(result["targets"])])


def main(argv=None) -> None:
    repeats_main("images", __doc__, run, report, argv)
