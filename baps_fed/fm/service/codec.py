"""numpy <-> protobuf messages of the FM service, checked byte by byte.

Both ends use these functions, so what a client encodes is exactly what the server decodes. The
decoders trust nothing: every shape, dtype and byte length is checked and a ``RequestError`` says
what was wrong, which the server returns as INVALID_ARGUMENT.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from baps_fed.fm.errors import FMInputError

# Proto enum values (baps_fed_fm.proto, DType); fixed by the .proto, so no generated import here.
UINT8, INT32, FLOAT16, FLOAT32 = 1, 2, 3, 4
NUMPY_DTYPES: dict[int, np.dtype] = {
    UINT8: np.dtype("<u1"),
    INT32: np.dtype("<i4"),
    FLOAT16: np.dtype("<f2"),
    FLOAT32: np.dtype("<f4"),
}
DTYPE_NAMES = {UINT8: "uint8", INT32: "int32", FLOAT16: "float16", FLOAT32: "float32"}
OUTPUT_DTYPES = {"float32": FLOAT32, "float16": FLOAT16}
FLOAT16_MAX = float(np.finfo(np.float16).max)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def max_pixels_for(max_message_bytes: int) -> int:
    """The most decoded pixels (B*H*W) a request may hold under a server's message limit.

    Its reply needs at least 2 bytes (float16 logits) per pixel, so a request holding more could
    never be answered: larger PNG batches are refused before any pixel is decoded, which bounds
    the memory a small PNG declaring huge dimensions (a decompression bomb) can claim.
    """
    return max(1, max_message_bytes // NUMPY_DTYPES[FLOAT16].itemsize)


class RequestError(FMInputError):
    """A malformed request (shape, dtype, byte length, PNG); the server answers INVALID_ARGUMENT."""


@dataclass
class DecodedRequest:
    images: np.ndarray  # uint8 [B,H,W,3]
    points: np.ndarray | None  # float32 [B,N,2] or None (a box-only query)
    labels: np.ndarray | None  # int32 [B,N] or None (all foreground)
    output_dtype: int  # FLOAT32 or FLOAT16
    boxes: np.ndarray | None = None  # float32 [B,4] or None (a point-only query)


def fill_tensor(msg: Any, array: np.ndarray, dtype: int) -> None:
    """Write ``array`` as ``dtype`` into a ``Tensor`` message."""
    arr = np.ascontiguousarray(array, dtype=NUMPY_DTYPES[dtype])
    msg.shape[:] = list(arr.shape)
    msg.dtype = dtype
    msg.data = arr.tobytes()


def read_tensor(msg: Any, name: str, dtype: int, ndim: int, layout: str = "") -> np.ndarray:
    """The array in a ``Tensor`` message, after checking its dtype, rank and byte length;
    ``layout`` (e.g. " [B,4]") is shown in the rank error."""
    if msg.dtype != dtype:
        got = DTYPE_NAMES.get(msg.dtype, f"enum value {msg.dtype}")
        raise RequestError(f"{name} must be {DTYPE_NAMES[dtype]}, got {got}")
    shape = tuple(int(s) for s in msg.shape)
    if len(shape) != ndim or any(s < 0 for s in shape):
        raise RequestError(f"{name} must be a {ndim}-d array{layout}, got shape {list(shape)}")
    itemsize = NUMPY_DTYPES[dtype].itemsize
    expected = int(np.prod(shape, dtype=np.int64)) * itemsize
    if len(msg.data) != expected:
        raise RequestError(
            f"{name} has {len(msg.data)} bytes but shape {list(shape)} of "
            f"{DTYPE_NAMES[dtype]} needs {expected}"
        )
    # A writable copy: torch refuses to wrap read-only buffers without a warning.
    return np.frombuffer(msg.data, dtype=NUMPY_DTYPES[dtype]).reshape(shape).copy()


def encode_png(image: np.ndarray, compress_level: int = 3) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(
        buf, format="PNG", compress_level=compress_level
    )
    return buf.getvalue()


def png_size(data: bytes, index: int) -> tuple[int, int]:
    """(width, height) as a PNG's IHDR header declares them, read without decoding anything."""
    if len(data) < 24 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise RequestError(
            f"PNG image {index} cannot be decoded: no PNG signature and IHDR header; "
            "send 8-bit RGB PNG files"
        )
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def decode_png(data: bytes, index: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """One PNG as uint8 [H,W,3]; ``size`` (W, H), when given, is checked before pixels load."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "PNG":
                raise RequestError(f"image {index} is {im.format}, not PNG")
            if im.mode != "RGB":
                raise RequestError(f"PNG image {index} has mode {im.mode}; send 8-bit RGB images")
            if size is not None and im.size != size:
                raise RequestError(
                    f"PNG image {index} is {im.size[0]}x{im.size[1]}, expected {size[0]}x{size[1]}"
                )
            return np.asarray(im, dtype=np.uint8)
    except RequestError:
        raise
    except Exception as err:  # PIL raises many types for corrupt or hostile files
        raise RequestError(f"PNG image {index} cannot be decoded: {err}") from err


def _check_pixels(b: int, h: int, w: int, max_pixels: int | None) -> None:
    if max_pixels is not None and b * h * w > max_pixels:
        raise RequestError(
            f"images declare {b}x{h}x{w} = {b * h * w} pixels, more than this server decodes "
            f"per request ({max_pixels}, set by its message limit); send fewer or smaller "
            "images per call"
        )


def fill_images(msg: Any, images: np.ndarray, png: bool) -> None:
    """Raw uint8 [B,H,W,3] bytes, or one PNG per image."""
    if png:
        msg.png.png.extend(encode_png(im) for im in images)
    else:
        fill_tensor(msg.raw, images, UINT8)


def read_images(
    msg: Any,
    max_pixels: int | None = None,
    batch: int | None = None,
    prompt: str = "points have shape [B,N,2]",
) -> np.ndarray:
    """uint8 [B,H,W,3] from raw bytes or PNGs.

    PNG headers are checked before any pixel is decoded: every image must declare the same
    W x H, ``batch`` (when given, the B of the request's prompt, which ``prompt`` describes)
    images must be sent, and B*H*W must not exceed ``max_pixels``.
    """
    which = msg.WhichOneof("payload")
    if which == "raw":
        images = read_tensor(msg.raw, "images", UINT8, 4)
        _check_pixels(*images.shape[:3], max_pixels)
    elif which == "png":
        files = list(msg.png.png)
        if not files:
            raise RequestError("empty query: no PNG images in the batch")
        if batch is not None and len(files) != batch:
            raise RequestError(
                f"{len(files)} PNG images but {prompt} with B={batch}; "
                "send one PNG per image of the prompt"
            )
        sizes = [png_size(data, i) for i, data in enumerate(files)]
        if len(set(sizes)) > 1:
            shown = sorted({f"{w}x{h}" for w, h in sizes})
            raise RequestError(
                f"PNG images of one batch must share H, W; got {shown}: "
                "resize them or send separate requests"
            )
        w, h = sizes[0]
        _check_pixels(len(files), h, w, max_pixels)
        images = np.stack([decode_png(data, i, (w, h)) for i, data in enumerate(files)])
    else:
        raise RequestError("images missing: set images.raw (uint8 [B,H,W,3]) or images.png")
    if images.shape[-1] != 3:
        raise RequestError(f"images must have shape [B,H,W,3] (RGB), got {list(images.shape)}")
    if 0 in images.shape:
        raise RequestError(f"empty query: images have shape {list(images.shape)}")
    return images


def encode_request(
    request: Any,
    images: np.ndarray,
    points: np.ndarray | None,
    labels: np.ndarray | None,
    png: bool,
    output_dtype: str,
    boxes: np.ndarray | None = None,
) -> Any:
    """Fill a ``SegmentRequest`` (already validated arrays); an absent prompt stays unset."""
    fill_images(request.images, images, png)
    if points is not None:
        fill_tensor(request.points, points, FLOAT32)
    if labels is not None:
        fill_tensor(request.labels, labels, INT32)
    if boxes is not None:
        fill_tensor(request.boxes, boxes, FLOAT32)
    request.output_dtype = OUTPUT_DTYPES[output_dtype]
    return request


def decode_request(request: Any, max_pixels: int | None = None) -> DecodedRequest:
    """Checked arrays of a ``SegmentRequest``; ``max_pixels`` bounds B*H*W (see max_pixels_for).

    Points and boxes are each optional, not both: a request from a client that predates boxes
    (field 5 unset) decodes as before.
    """
    points = boxes = None
    if request.HasField("points"):
        points = read_tensor(request.points, "points", FLOAT32, 3, " [B,N,2]")
    if request.HasField("boxes"):
        boxes = read_tensor(request.boxes, "boxes", FLOAT32, 2, " [B,4]")
    if points is not None:
        batch, prompt = points.shape[0], "points have shape [B,N,2]"
    elif boxes is not None:
        batch, prompt = boxes.shape[0], "boxes have shape [B,4]"
    else:
        raise RequestError("a query needs a prompt: set points [B,N,2] and/or boxes [B,4]")
    images = read_images(request.images, max_pixels, batch, prompt)
    labels = None
    if request.HasField("labels"):
        labels = read_tensor(request.labels, "labels", INT32, 2)
    out = request.output_dtype or FLOAT32
    if out not in (FLOAT32, FLOAT16):
        got = DTYPE_NAMES.get(out, f"enum value {out}")
        raise RequestError(f"output_dtype must be FLOAT32 or FLOAT16, got {got}")
    return DecodedRequest(images, points, labels, out, boxes)


def fill_logits(msg: Any, logits: np.ndarray, dtype: int) -> None:
    """float32 logits as the requested dtype; float16 is clipped to its finite range."""
    if dtype == FLOAT16:
        logits = np.clip(logits, -FLOAT16_MAX, FLOAT16_MAX)
    fill_tensor(msg, logits, dtype)


def read_logits(msg: Any) -> np.ndarray:
    """float32 [B,H,W] from a response's logits, whatever dtype they travelled in."""
    dtype = msg.dtype if msg.dtype in (FLOAT16, FLOAT32) else FLOAT32
    return read_tensor(msg, "logits", dtype, 3).astype(np.float32)
