import io

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

import bliptk
from bliptk.core.preprocess import Preprocessor, load_image


@pytest.fixture(scope="module")
def reference():
    """transformers' BLIP image processor with the base checkpoint's settings."""
    return BlipImageProcessorPil(size={"height": 384, "width": 384})


def test_equals_transformers_on_real_photos(photos, reference):
    ours = Preprocessor()(photos)
    theirs = reference(images=[Image.open(p) for p in photos], return_tensors="pt").pixel_values
    # the core preprocessor is torch-free: it returns NumPy, which the torch runtime wraps
    assert isinstance(ours, np.ndarray)
    assert ours.shape == (len(photos), 3, 384, 384) and ours.dtype == np.float32
    torch.testing.assert_close(torch.from_numpy(ours), theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK"])
def test_any_mode_equals_transformers(photos, reference, mode):
    image = Image.open(photos[0]).convert(mode)
    ours = Preprocessor()(image)
    theirs = reference(images=image, return_tensors="pt").pixel_values
    torch.testing.assert_close(torch.from_numpy(ours), theirs, atol=1e-5, rtol=0)


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    image = Image.fromarray(ramp)
    assert image.mode == "I;16"
    rgb = np.asarray(load_image(image))
    assert rgb.shape == (64, 64, 3)
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255 and 120 < rgb[32, 0, 0] < 135


def test_transparency_is_composited_on_white():
    clear = Image.new("RGBA", (4, 4), (200, 0, 0, 0))
    assert np.asarray(load_image(clear)).tolist() == np.full((4, 4, 3), 255).tolist()
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([10, 20, 30] * 256)
    palette.info["transparency"] = 0
    assert np.asarray(load_image(palette))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert load_image(path).size == (20, 40)


def test_numpy_and_tensor_inputs_equal_the_pil_image(photos):
    image = load_image(photos[0])
    array = np.array(image)
    expected = Preprocessor()(image)
    torch.testing.assert_close(Preprocessor()(array), expected)
    torch.testing.assert_close(Preprocessor()(torch.from_numpy(array).permute(2, 0, 1)), expected)
    as_float = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(Preprocessor()(as_float), expected)
    torch.testing.assert_close(Preprocessor()(array[..., 0]), Preprocessor()(Image.fromarray(array[..., 0])))


@pytest.mark.parametrize("size", [(1, 1), (1, 4000), (4000, 1)])
def test_tiny_and_extreme_sizes_work(size):
    assert Preprocessor()(Image.new("RGB", size, (9, 99, 199))).shape == (1, 3, 384, 384)


def test_bad_inputs_name_the_input(tmp_path):
    with pytest.raises(bliptk.ImageLoadError, match="missing.jpg: no such file"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(bliptk.ImageLoadError, match="is a directory"):
        load_image(tmp_path)
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    with pytest.raises(bliptk.ImageLoadError, match=r"notes\.jpg: not an image file"):
        load_image(text)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, "JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(buffer.getvalue()[:300])
    with pytest.raises(bliptk.ImageLoadError, match=r"truncated\.jpg: corrupt or truncated"):
        load_image(truncated)
    with pytest.raises(bliptk.ImageLoadError, match=r"shape \(2, 3, 4, 5\)"):
        load_image(np.zeros((2, 3, 4, 5), dtype=np.uint8))
    with pytest.raises(bliptk.ImageLoadError, match="unsupported image type"):
        load_image(42)
