"""Listing image files with Spark and decoding them robustly with Pillow.

Listing uses Spark's ``binaryFile`` source (glob filter on the file name,
recursive lookup), so the same call reads a local folder or any Hadoop URI
(``s3://`` on EMR). The label of an image is the name of its parent folder,
kept exactly as it is on disk (spaces, unicode, ``%``, ``#``).

Decoding never raises on bad data: :func:`decode_image` returns either a
``uint8`` array or a short reason from :data:`ERROR_REASONS`.
"""

from __future__ import annotations

import io
import re
import warnings
from typing import TYPE_CHECKING, Optional, Sequence, Tuple
from urllib.parse import unquote, urlsplit

import numpy as np

from p8utils import storage
from p8utils.errors import ParameterError

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "DEFAULT_EXTENSIONS",
    "DEFAULT_MAX_PIXELS",
    "ERROR_REASONS",
    "extension_glob",
    "normalise_extensions",
    "check_input",
    "load_images",
    "decode_image",
]

#: File extensions that count as images by default (matched case-insensitively:
#: ``.jpg``, ``.JPG``, ``.jpeg``, ``.JPEG``, ``.Jpg`` …).
DEFAULT_EXTENSIONS: Tuple[str, ...] = ("jpg", "jpeg")

#: Images declaring more pixels than this are refused (``too_large``) before
#: their pixels are decoded: a decompression bomb costs a header read, not RAM.
#: 64 Mpx covers every real camera photo (a 4000×3000 photo is 12 Mpx).
DEFAULT_MAX_PIXELS: int = 64_000_000

#: The fixed vocabulary of the ``error`` column.
ERROR_REASONS: Tuple[str, ...] = (
    "empty",  # zero-byte file
    "lfs_pointer",  # a Git LFS pointer instead of the image (run `git lfs pull`)
    "not_an_image",  # Pillow does not recognise the bytes as an image
    "too_large",  # declared size above max_pixels (decompression bomb guard)
    "truncated",  # image data ends early
    "decode_error",  # recognised but could not be decoded
)

_LFS_MAGIC = b"version https://git-lfs"


def extension_glob(extensions: Sequence[str] = DEFAULT_EXTENSIONS) -> str:
    """Build a case-insensitive Hadoop glob matching the given extensions.

    Parameters
    ----------
    extensions : sequence of str
        Extensions without dot, e.g. ``("jpg", "jpeg")``.

    Returns
    -------
    str
        E.g. ``"*.{[jJ][pP][gG],[jJ][pP][eE][gG]}"``.
    """
    exts = normalise_extensions(extensions)
    parts = ["".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in e) for e in exts]
    return "*." + (parts[0] if len(parts) == 1 else "{" + ",".join(parts) + "}")


def normalise_extensions(extensions: Sequence[str]) -> Tuple[str, ...]:
    """Validate and lower-case extensions (``".JPG"`` → ``"jpg"``)."""
    if isinstance(extensions, str):
        extensions = [e for e in extensions.split(",")]
    exts = tuple(dict.fromkeys(e.strip().lstrip(".").lower() for e in extensions if e.strip()))
    bad = [e for e in exts if not e.isalnum()]
    if not exts or bad:
        raise ParameterError(
            f"extensions={list(extensions)!r} is not a list of file extensions. "
            "Fix: pass alphanumeric extensions without dot, e.g. ['jpg', 'jpeg']."
        )
    return exts


def _has_extension(name: str, exts: Tuple[str, ...]) -> bool:
    """Tell whether file ``name`` ends with one of ``exts`` (case-insensitive)."""
    return "." in name and name.rsplit(".", 1)[1].lower() in exts


def check_input(
    path: str,
    extensions: Sequence[str] = DEFAULT_EXTENSIONS,
    spark: Optional[SparkSession] = None,
) -> None:
    """Fail fast when ``path`` is missing or holds no image; no Spark job runs.

    Parameters
    ----------
    path : str
        Local folder or Hadoop URI. Hadoop URIs need ``spark`` (its JVM's
        ``FileSystem`` answers; listing stops at the first image found).
    extensions : sequence of str
        Extensions that count as images.
    spark : SparkSession, optional
        Needed for non-local URIs only.

    Raises
    ------
    ParameterError
        Missing path, a path that is a file, or no image below it.
    """
    exts = normalise_extensions(extensions)
    if not path:
        raise ParameterError("input is empty. Fix: pass the folder of images (one sub-folder per class).")
    if storage.is_local(path):
        local = storage.local_path(path)
        if not local.exists():
            raise ParameterError(
                f"input={path!r} does not exist. Fix: pass an existing folder of images "
                "(one sub-folder per class), e.g. data_sample/."
            )
        if not local.is_dir():
            raise ParameterError(f"input={path!r} is a file. Fix: pass the folder that holds the class folders.")
    elif not storage.exists(path, spark):
        raise ParameterError(f"input={path!r} does not exist. Fix: check the bucket/prefix (aws s3 ls {path}).")
    for name in storage.iter_files(path, spark):
        base = name.rsplit("/", 1)[-1]
        if _has_extension(base, exts) and not base.startswith((".", "_")):
            return
    raise ParameterError(
        f"input={path!r} holds no image with extension {'/'.join(exts)} (case-insensitive). "
        "Fix: point input at the folder holding one sub-folder per class of .jpg files, "
        "or pass extensions=[...] / --extensions to count other file types."
    )


def load_images(
    spark: SparkSession,
    path: Optional[str] = None,
    extensions: Sequence[str] = DEFAULT_EXTENSIONS,
    *,
    files: Optional[Sequence[str]] = None,
    images_per_partition: int = 256,
) -> DataFrame:
    """List and read the images below ``path`` with Spark's ``binaryFile`` source.

    Parameters
    ----------
    spark : SparkSession
    path : str, optional
        Local folder or Hadoop URI (``s3://bucket/prefix/``), searched recursively.
    extensions : sequence of str
        File extensions that count as images, case-insensitive.
    files : sequence of str, optional
        Instead of ``path``: exactly these files, as Spark prints them in the
        ``path`` column (e.g. from an earlier listing). Glob characters in
        their names are escaped, so ``a[1].jpg`` is read literally.
    images_per_partition : int
        Target images per Spark task (partitions are merged, never split, and
        never fewer than the default parallelism).

    Raises
    ------
    ParameterError
        ``path`` is missing or holds no image (checked before any Spark job).

    Returns
    -------
    pyspark.sql.DataFrame
        Columns ``path`` (string, Spark's URI of the file), ``label`` (string,
        parent folder name), ``content`` (binary), ``modificationTime``
        (timestamp), ``length`` (long, bytes). One row per file, lazily read.

    Notes
    -----
    Zero-byte files, which Spark's reader drops, are added back with empty
    ``content`` so that every listed file gives exactly one row. Spark's file
    index skips names starting with ``_`` or ``.`` (``_SUCCESS``-style
    metadata); such images are not read.
    """
    from pyspark.sql import functions as F

    if (path is None) == (files is None):
        raise ParameterError("load_images needs exactly one of path= and files=.")
    reader = (
        spark.read.format("binaryFile")
        .option("pathGlobFilter", extension_glob(extensions))
        .option("recursiveFileLookup", "true")
    )
    if files is not None:
        if not files:
            return spark.createDataFrame([], _IMAGES_SCHEMA)
        raw = reader.load([_escape_glob(f) for f in files])
    else:
        check_input(path, extensions, spark)  # a clear ParameterError, not Spark's PATH_NOT_FOUND
        raw = reader.load(str(storage.local_path(path)) if storage.is_local(path) else path)
    raw = raw.select("path", "content", "modificationTime", "length")
    # Spark makes no split for a zero-byte file, so it would vanish from the
    # read. The file index (a driver-side listing, no job) still has it: add
    # the files the read misses as rows with empty content (-> error "empty").
    listed = [_index_uri_to_path(u) for u in raw.inputFiles()]
    listing = spark.createDataFrame([(p,) for p in listed], "path string")
    empties = listing.join(raw.select("path"), "path", "left_anti").select(
        "path",
        F.lit(bytearray()).alias("content"),
        F.lit(None).cast("timestamp").alias("modificationTime"),
        F.lit(0).cast("long").alias("length"),
    )
    images = raw.unionByName(empties)
    # Spark packs ~32 small files per partition (4 MB "open cost" each): tasks of
    # a few dozen images whose fixed cost rivals the work. Merge them (narrow
    # coalesce, no shuffle of bytes) to ~images_per_partition, never below the
    # number of cores.
    parallelism = spark.sparkContext.defaultParallelism
    wanted = max(parallelism, -(-len(listed) // max(1, images_per_partition)))
    if wanted < images.rdd.getNumPartitions():
        images = images.coalesce(wanted)
    return images.select(
        "path",
        F.regexp_extract("path", r"([^/]*)/[^/]*$", 1).alias("label"),
        "content",
        "modificationTime",
        "length",
    )


_IMAGES_SCHEMA = "path string, label string, content binary, modificationTime timestamp, length long"

_GLOB_CHARS = re.compile(r"([\\*?\[\]{}])")


def _escape_glob(path: str) -> str:
    """Escape Hadoop glob characters so ``path`` matches only itself."""
    return _GLOB_CHARS.sub(r"\\\1", path)


def _index_uri_to_path(uri: str) -> str:
    """Turn a file-index URI (percent-encoded) into Spark's ``path`` column form.

    ``file:///a/b%20c/x.jpg`` → ``file:/a/b c/x.jpg``;
    ``s3://bucket/a%20b/x.jpg`` → ``s3://bucket/a b/x.jpg`` (Hadoop ``Path.toString``).
    """
    parts = urlsplit(uri)
    path = unquote(parts.path)
    if parts.scheme == "file":
        return "file:" + path
    return f"{parts.scheme}://{parts.netloc}{path}"


def decode_image(
    data: Optional[bytes],
    size: Tuple[int, int] = (224, 224),
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """Decode image bytes to an RGB ``uint8`` array of the model's input size.

    Any source mode is converted to RGB (grayscale, palette, CMYK, 16-bit);
    transparency is composited on white (the Fruits-360 background); EXIF
    orientation is applied; the image is resized with bicubic interpolation
    (Pillow's default for RGB, as the earlier notebooks did). Large JPEGs are
    decoded at a reduced scale first (Pillow ``draft``), which bounds memory.

    Parameters
    ----------
    data : bytes or None
        The file's content.
    size : (int, int)
        Output ``(width, height)``.
    max_pixels : int
        Images declaring more pixels are refused with ``too_large``.

    Returns
    -------
    (numpy.ndarray or None, str or None)
        ``(array of shape (height, width, 3), dtype uint8, None)`` on success,
        ``(None, reason)`` otherwise, reason in :data:`ERROR_REASONS`.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if data is None or len(data) == 0:
        return None, "empty"
    data = bytes(data)
    if data.startswith(_LFS_MAGIC):
        return None, "lfs_pointer"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            return None, "too_large"
        except (UnidentifiedImageError, ValueError, TypeError):
            return None, "not_an_image"
        except (OSError, SyntaxError, EOFError):
            return None, "decode_error"
        try:
            width, height = img.size
            if width * height > max_pixels:
                return None, "too_large"
            if width < 1 or height < 1:
                return None, "decode_error"
            if img.format == "JPEG":
                img.draft("RGB", size)
            img = ImageOps.exif_transpose(img)
            img = _to_rgb(img)
            if img.size != tuple(size):
                img = img.resize(tuple(size), Image.BICUBIC)
            arr = np.asarray(img, dtype=np.uint8)
        except Image.DecompressionBombError:
            return None, "too_large"
        except OSError as exc:
            return None, "truncated" if "truncat" in str(exc).lower() else "decode_error"
        except (SyntaxError, ValueError, EOFError, IndexError, TypeError, ZeroDivisionError):
            return None, "decode_error"
    if arr.shape != (size[1], size[0], 3):  # pragma: no cover - defensive
        return None, "decode_error"
    return arr, None


def _to_rgb(img):  # noqa: ANN001, ANN202 - PIL.Image in, PIL.Image out
    """Convert any Pillow mode to RGB; transparency goes on a white background."""
    from PIL import Image

    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr * (255.0 / peak), 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "RGBX"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")
