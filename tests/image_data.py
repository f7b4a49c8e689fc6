"""Images the tests make themselves: each encodes its row id in its colour, so that any crop,
resize or flip of it still says which row it came from."""

import io

import numpy as np
import pyarrow as pa
from PIL import Image

import gpupre as gp

STEP = 16  # colour levels per id digit: far wider than JPEG's error on flat colour


def picture(row_id: int, height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3]: red and green flat (they spell row_id), blue a ramp (so crops differ)."""
    y, x = np.mgrid[0:height, 0:width]
    a = np.empty((height, width, 3), np.uint8)
    a[..., 0] = (row_id % 16) * STEP + STEP // 2
    a[..., 1] = (row_id // 16 % 16) * STEP + STEP // 2
    a[..., 2] = (x * 255 // max(width - 1, 1) + y * 64 // max(height - 1, 1)) % 256
    return a


def encode(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **({"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def decode_ids(images) -> np.ndarray:
    """Row ids spelled by images [N, 3, H, W] (uint8 pixels; a flip or crop keeps them)."""
    images = np.asarray(images.cpu() if hasattr(images, "cpu") else images, np.float64)
    red, green = images[:, 0].mean(axis=(1, 2)), images[:, 1].mean(axis=(1, 2))
    return (np.floor(red / STEP) + 16 * np.floor(green / STEP)).astype(np.int64)


def write_images(path: str, rows: int, row_group_rows: int) -> str:
    """rows images (JPEG, every third a PNG; sizes vary) with row_id, label = row_id and a dense x."""
    images = [encode(picture(i, 24 + i % 7, 32 + 3 * (i % 5)), "PNG" if i % 3 == 0 else "JPEG") for i in range(rows)]
    table = pa.table({
        "thumb": pa.array(images, pa.binary()),
        "x": pa.array(np.arange(rows, dtype=np.float32)),
        "label": pa.array(np.arange(rows, dtype=np.float32)),
        "row_id": pa.array(np.arange(rows, dtype=np.int64)),
    })  # fmt: skip
    gp.storage.write_table(table, path, schema=gp.Schema(
        (gp.Feature("thumb", "image"), gp.Feature("x", "dense")), ("label",), ("row_id",)), row_group_rows=row_group_rows)  # fmt: skip
    return path
