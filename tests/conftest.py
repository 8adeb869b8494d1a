"""Shared fixtures: a private cache folder, the embedded sample, small image folders made on the fly."""
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# One fresh cache per test session, so tests never read or write a user's cache (~/.cache/cnn_depth, or
# wherever their own CNN_DEPTH_CACHE points).
os.environ["CNN_DEPTH_CACHE"] = tempfile.mkdtemp(prefix="cnn-depth-test-cache-")

ROOT = Path(__file__).resolve().parents[1]
# Fixtures that train models: every test using one is marked slow (see pyproject's markers).
TRAINING_FIXTURES = {"bn_sweep", "straight", "run"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
FULL_CIFAR = ROOT.parent / "shared" / "data" / "cifar10.tgz"


def make_image_folder(root: Path, splits=("train", "valid"), classes=("a", "b"), n=6, size=(12, 12),
                      mode="RGB", ext="png", seed=0) -> Path:
    """Write ``n`` random images per class and split under ``root/<split>/<class>/`` and return ``root``.

    Class ``k`` images are brightness-shifted so that a model can tell them apart.
    """
    rng = np.random.default_rng(seed)
    for split in splits:
        for k, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shape = (size[0], size[1]) if mode == "L" else (size[0], size[1], 3)
                a = np.clip(rng.normal(60 + 120 * k, 30, shape), 0, 255).astype(np.uint8)
                Image.fromarray(a, mode=mode).save(d / f"{i:04d}.{ext}")
    return root


@pytest.fixture
def image_folder_factory(tmp_path):
    def _make(name="data", **kw):
        return make_image_folder(tmp_path / name, **kw)
    return _make


@pytest.fixture(scope="session")
def sample_dls():
    """DataLoaders over a small seeded subset of the embedded CIFAR-10 sample (20 per class per split)."""
    from cnn_depth import dataloaders
    return dataloaders("cifar10-sample", bs=32, max_per_class=20, device="cpu")
