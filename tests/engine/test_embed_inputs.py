"""`python -m engine.embed`: every file it does not embed is counted and named; bad labels, flags and
outputs are refused before the first image is embedded (exit 2, one line)."""
from __future__ import annotations

import numpy as np
from PIL import Image

from engine.embed import main as embed_main
from engine.gallery import Gallery


def _crops(folder, make_images, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name, pixels in zip(names, make_images(len(names), seed=4), strict=True):
        Image.fromarray(pixels).save(folder / name)
    return folder


def test_skipped_files_are_counted_and_named(tmp_path, artifact_dir, make_images, capsys):
    folder = _crops(tmp_path / "crops", make_images, ["0001_c1s1_01.png", "0001_c2s1_02.png", "0002_c1s1_03.png"])
    ramp = (np.arange(32 * 16).reshape(32, 16) * 120).astype(np.uint16)
    Image.fromarray(ramp).save(folder / "0002_c2s1_04.png")  # 16-bit grey: a row, not a white image
    Image.fromarray(make_images(1, seed=5)[0]).save(folder / "0003_c1s1_05.gif")
    (folder / "0003_c2s1_06.png").write_bytes(b"\x89PNG truncated")
    out = tmp_path / "g.npz"
    assert embed_main([str(folder), "--artifact", str(artifact_dir), "--out", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "skipped 1 file(s) that are not .jpg/.jpeg/.png/.bmp images: 0003_c1s1_05.gif\n" in captured.err
    assert "skipped 1 unreadable image(s) of 5: 0003_c2s1_06.png\n" in captured.err
    assert "4 images" in captured.out and "skipped 2 files" in captured.out
    gallery = Gallery.load(out)
    assert gallery.paths == ["0001_c1s1_01.png", "0001_c2s1_02.png", "0002_c1s1_03.png", "0002_c2s1_04.png"]
