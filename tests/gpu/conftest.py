"""Every test under tests/gpu/ needs a CUDA GPU: mark it `gpu` and skip it cleanly without one."""

from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    has_gpu = torch.cuda.is_available()
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.gpu)
            if not has_gpu:
                item.add_marker(
                    pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
                )
