"""Image folders are checked before they are trusted: symlinks, 16-bit images."""

import os
import warnings

import numpy as np
import pytest

from effscale.data import load_data
from effscale.data.folder import UnfollowedLinksWarning, decode


def _folder(root, n=3):
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    return root


def test_symlink_loop_and_link_out_are_not_followed(tmp_path):
    from PIL import Image
    root = _folder(tmp_path / "imgs")
    os.symlink("..", root / "train" / "a" / "loop")
    outside = tmp_path / "outside.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(outside)
    os.symlink(outside, root / "train" / "b" / "out.png")
    with pytest.warns(UnfollowedLinksWarning, match="train/a/loop.*train/b/out.png"):
        data = load_data(f"imagefolder:{root}")
    assert len(data.train) == 6 and len(data.val) == 6
    assert sorted(data.train.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    names = [os.path.relpath(p, root) for p, _ in data.train.samples]
    assert all("loop" not in n and "out.png" not in n for n in names)


def test_plain_folder_warns_nothing(tmp_path):
    root = _folder(tmp_path / "imgs")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = load_data(f"imagefolder:{root}")
    assert len(data.train) == 6


def test_16_bit_png_decodes_to_mid_grey(tmp_path):
    from PIL import Image
    Image.fromarray(np.full((4, 4), 32768, np.uint16)).save(tmp_path / "g.png")
    image = decode(str(tmp_path / "g.png"))
    assert image.mode == "RGB" and abs(image.getpixel((0, 0))[0] - 128) <= 1
