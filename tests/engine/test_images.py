
import numpy as np
import pytest
from PIL import Image

from engine.errors import ArtifactError, DataError, InputError
from engine.images import list_images, load_image, load_images


def _write(path, pixels):
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def gradient():
    """A 40x20 RGB image whose colour depends on position, so resize mistakes show."""
    y, x = np.mgrid[0:40, 0:20]
    return np.stack([y * 6, x * 12, np.full_like(y, 77)], -1).astype(np.uint8)


def test_load_image_resizes_to_height_by_width(tmp_path, gradient):
    img = load_image(_write(tmp_path / "a.png", gradient), 20, 10)
    assert img.dtype == np.uint8 and img.shape == (20, 10, 3)
    # top of the picture stays dark in red, bottom bright: rows were not swapped with columns
    assert img[0, :, 0].mean() < img[-1, :, 0].mean()
    assert np.all(img[..., 2] == 77)


def test_load_image_keeps_native_size_untouched(tmp_path, gradient):
    np.testing.assert_array_equal(load_image(_write(tmp_path / "a.png", gradient), 40, 20), gradient)


def test_load_image_converts_grey_to_rgb(tmp_path):
    path = tmp_path / "g.png"
    Image.fromarray(np.full((8, 4), 120, np.uint8), mode="L").save(path)
    img = load_image(path, 8, 4)
    assert img.shape == (8, 4, 3) and np.all(img == 120)


def test_corrupt_and_missing_files_name_the_path(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(ArtifactError, match="bad.png"):
        load_image(bad, 8, 4)
    with pytest.raises(ArtifactError, match="missing.png"):
        load_image(tmp_path / "missing.png", 8, 4)


def test_bad_size_is_an_input_error(tmp_path, gradient):
    with pytest.raises(InputError, match="positive"):
        load_image(_write(tmp_path / "a.png", gradient), 0, 4)


def test_load_images_skips_unreadable_with_one_warning(tmp_path, gradient):
    good = [_write(tmp_path / f"{i}.png", gradient) for i in range(3)]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"junk")
    paths = [good[0], bad, good[1], tmp_path / "gone.png", good[2]]
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable.*broken\.png") as record:
        images, kept = load_images(paths, 10, 5)
    assert len(record) == 1
    assert kept == [0, 2, 4]
    assert images.shape == (3, 10, 5, 3) and images.dtype == np.uint8


def test_load_images_raise_mode_and_bad_mode(tmp_path, gradient):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"junk")
    with pytest.raises(ArtifactError, match="broken.png"):
        load_images([_write(tmp_path / "a.png", gradient), bad], 10, 5, on_error="raise")
    with pytest.raises(InputError, match="on_error"):
        load_images([], 10, 5, on_error="ignore")


def test_no_images_is_an_error_saying_where_and_for_what(tmp_path, gradient):
    """An empty list, a missing or empty folder, a folder of other files: errors, never an empty batch."""
    with pytest.raises(InputError, match="load_images got no paths"):
        load_images([], 10, 5)
    with pytest.raises(DataError, match=f"image folder {tmp_path / 'missing'} does not exist"):
        list_images(tmp_path / "missing")
    (tmp_path / "crops" / "sub").mkdir(parents=True)
    (tmp_path / "crops" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=rf"no \.jpg/\.jpeg/\.png/\.bmp images under {tmp_path / 'crops'} "
                       r"\(searched recursively"):
        list_images(tmp_path / "crops")
    _write(tmp_path / "crops" / "sub" / "b.PNG", gradient)
    _write(tmp_path / "crops" / "a.jpeg", gradient)
    assert list_images(tmp_path / "crops") == [tmp_path / "crops" / "a.jpeg", tmp_path / "crops" / "sub" / "b.PNG"]


def test_sixteen_bit_grey_png_is_scaled_to_eight_bits_not_white(tmp_path):
    """PIL's convert clips 16-bit grey at 255: every pixel of this ramp came back 255."""
    ramp = (np.arange(40 * 20).reshape(40, 20) * 81).astype(np.uint16)  # 0..64719
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as img:
        assert img.mode == "I;16"
    got = load_image(tmp_path / "deep.png", 40, 20)
    expected = np.round(ramp / 65535 * 255).astype(np.uint8)
    np.testing.assert_array_equal(got[..., 0], expected)
    assert (got == got[..., :1]).all() and got.max() == expected.max() < 255


def test_float_pixels_are_refused_by_name(tmp_path):
    Image.fromarray(np.full((8, 4), 0.5, np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ArtifactError, match=r"cannot read image .*float\.tif: 32-bit float pixels"):
        load_image(tmp_path / "float.tif", 8, 4)


def test_scan_names_the_files_it_skips(tmp_path, gradient):
    from engine.images import named, scan_images

    _write(tmp_path / "a.png", gradient)
    Image.fromarray(gradient).save(tmp_path / "moving.gif")
    (tmp_path / "notes.txt").write_text("x")
    assert scan_images(tmp_path) == ([tmp_path / "a.png"], [tmp_path / "moving.gif", tmp_path / "notes.txt"])
    assert named(["a", "b", "c", "d", "e"]) == "a, b, c and 2 more" and named(["a"]) == "a"
