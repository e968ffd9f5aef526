"""Reading image files of any kind as the ``(H, W, 3)`` uint8 RGB the model takes.

One rule for ``prepare_coco`` (images stored for training and evaluation) and ``predict``
(images from disk), so a picture looks the same to both:

- **EXIF orientation** (phone photos): the pixels are transposed as the EXIF tag says
  (``PIL.ImageOps.exif_transpose``), because annotation tools (CVAT, Label Studio, labelme,
  Roboflow) show the transposed picture and write its width and height into the JSON.
  ``prepare_coco`` checks this against the JSON: if the JSON has the *stored* (untransposed)
  size and not the transposed one, the tool ignored the tag and the pixels are kept as stored.
  A 180-degree tag keeps the size either way; it is applied (the tools' behaviour).
- **Grayscale, palette, RGBA, CMYK, bilevel**: converted to RGB (alpha is dropped, palette
  colours looked up); grey becomes three equal channels.
- **16-bit** (``I;16`` PNG/TIFF, 32-bit integer ``I``): scaled over the full 16-bit range,
  ``round(v * 255 / 65535)``, not clipped at 255; the same factor for every image, so
  intensities stay comparable across a dataset (no per-image stretching). 48-bit RGB PNGs are
  read by PIL at their high byte (``v // 256``), the same scale within one level.

``plain_rgb`` decides whether a file's bytes can be stored as they are: JPEG or 8-bit RGB
PNG (and no EXIF rotation to apply). Anything else is re-encoded (JPEG sources as JPEG quality 95,
they were lossy already; all others as PNG, lossless), because the reader (``tfds`` decodes
with OpenCV when installed, else PIL) ignores EXIF and would truncate 16-bit values.

Shape shorthand: ``H, W`` image size. Taught in notebooks/13_your_own_dataset.
"""

import io

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
ROTATING = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_EXIF_ORIENTATION = 0x0112


def exif_orientation(image):
    """The EXIF orientation tag of a PIL image (1 = upright, also when absent or unreadable)."""
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # malformed EXIF blocks raise several types; treat as upright
        return 1


def to_rgb8(image):
    """``(H, W, 3)`` uint8 of a PIL image of any mode (16-bit scaled, see the docstring)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image).astype(np.float64)  # (H, W) uint16 or int32
        grey = np.clip(np.round(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)  # (H, W, 3)
    if image.mode == "F":
        raise ValueError(f"floating-point image (PIL mode F) of size {image.size}: expected "
                         "8- or 16-bit integer pixels; convert it to PNG first")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # palette with transparency: via RGBA, as PIL advises
    return np.asarray(image.convert("RGB"), np.uint8)


def decode_image(data, apply_exif=True):
    """``(H, W, 3)`` uint8 RGB of encoded image bytes, EXIF orientation applied if asked.

    Raises ``ValueError`` naming the problem when PIL cannot read the bytes.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if apply_exif and exif_orientation(image) != 1:
                image = ImageOps.exif_transpose(image)
            return to_rgb8(image)
    except ValueError:
        raise
    except Exception as error:  # PIL raises OSError, SyntaxError, ... for broken files
        raise ValueError(f"not a readable image ({type(error).__name__}: {error})") from None


def read_image(path):
    """``(H, W, 3)`` uint8 RGB of an image file, EXIF orientation applied (``predict``)."""
    try:
        data = open(path, "rb").read()
    except OSError as error:
        raise ValueError(f"cannot open {path}: {error.strerror}") from None
    try:
        return decode_image(data)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def plain_rgb(data, image):
    """Whether ``data`` (the bytes of the opened PIL ``image``) decode to the same 8-bit RGB
    pixels in every decoder, EXIF aside: JPEG in RGB, or PNG of 8-bit RGB (colour type 2)."""
    if image.mode != "RGB":
        return False
    if image.format == "JPEG":
        return True
    # PNG: IHDR's bit depth at byte 24 and colour type at byte 25 (after the signature)
    return image.format == "PNG" and data[24] == 8 and data[25] == 2


def encode_image(array, jpeg):
    """Bytes of ``(H, W, 3)`` uint8: JPEG quality 95 if ``jpeg`` else PNG (compress level 1)."""
    buffer = io.BytesIO()
    if jpeg:
        Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    else:
        Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
