"""The images of an issue, as mail clients need them: their size, and a lighter copy of any
image far wider than the email.

An image is shown at its natural width, at most the content column (:data:`COLUMN`). Outlook
for Windows ignores CSS widths, so the rendered ``<img>`` carries that width as an attribute,
read here from the file (after its EXIF orientation, as browsers and mail clients show it).

An image wider than twice the column is resized to twice the column (sharp on high-density
screens) and re-encoded; the copy is what the email links to and what the web version
publishes, and the original beside the post is never touched. Copies live in a cache
folder named by the original's content, so a render reads the original only once per change.
GIFs and other animated images are left as they are. What was measured is kept beside the
copies, under the original's content too: a new process (`check`, `build`, `send`) reads the
record instead of opening the image with Pillow again.

Nothing here raises for a bad image: :func:`inspect` returns an :class:`Image` whose
``problem`` says what is wrong, and the pre-flight checks turn that into an error naming the
file, so one bad picture does not hide the rest of the report.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import threading
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

COLUMN = 536  # px: the email's 600 px container less 32 px of padding on each side
LARGEST = 2 * COLUMN  # wider images are resized to this width
IMAGE_WARN_BYTES = 1024 * 1024  # per image, after resizing
ISSUE_WARN_BYTES = 3 * 1024 * 1024  # all of an issue's images together
RECIPE = "1"  # part of a cached copy's and record's name: change it when the encoding settings
# or what is measured change
JPEG_QUALITY = 82
WEBP_QUALITY = 80

# What mail clients show (caniemail: image-jpg, image-png, image-gif are supported
# everywhere; WebP is not shown by Outlook for Windows, and BMP, TIFF, SVG are not shown by
# Gmail or Outlook).
MAIL_FORMATS = {"JPEG", "PNG", "GIF"}
PARTLY_SHOWN = {"WEBP": "Outlook for Windows does not show WebP images"}


@dataclass(frozen=True, slots=True)
class Image:
    """One local image as the issue publishes it."""

    source: Path  # the original, beside the post
    file: Path  # what is published and mailed: the original, or its resized copy
    format: str | None = None  # Pillow's name: JPEG, PNG, GIF, WEBP ...
    width: int = 0  # of ``file``, as shown (EXIF orientation applied)
    height: int = 0
    bytes: int = 0  # of ``file``
    original_width: int = 0
    original_bytes: int = 0
    transparent_dark: bool = False  # dark content on a transparent background
    problem: str | None = None  # why it cannot be used, when it cannot

    @property
    def display_width(self) -> int:
        """The width the email shows it at, and its ``width`` attribute."""
        return min(self.width, COLUMN)

    @property
    def resized(self) -> bool:
        return self.file != self.source


_lock = threading.Lock()
_seen: dict[tuple[str, int, int], Image] = {}  # (path, size, mtime) -> what was found


def inspect(source: Path, cache: Path) -> Image:
    """``source`` measured, and resized into ``cache`` when it is far wider than the email."""
    try:
        info = source.stat()
    except OSError as exc:
        return Image(source=source, file=source, problem=f"cannot be read ({exc.strerror})")
    key = (str(source), info.st_size, info.st_mtime_ns)
    with _lock:
        found = _seen.get(key)
    if found is not None and (not found.resized or found.file.is_file()):
        return found
    digest = _content_digest(source)
    record = cache / f"{digest}-r{RECIPE}.json" if digest else None
    found = _read_record(source, record) if record else None
    if found is None:
        found = _inspect(source, info.st_size, cache, digest)
        if record and found.problem is None:
            _write_record(record, found)
    with _lock:
        _seen[key] = found
    return found


MEASURED = ("format", "width", "height", "bytes", "original_width", "original_bytes",
            "transparent_dark")


def _content_digest(source: Path) -> str | None:
    """What names the record and the resized copy of ``source``: a hash of its content."""
    try:
        with source.open("rb") as original:
            return hashlib.file_digest(original, "sha256").hexdigest()[:24]
    except OSError:
        return None


def _read_record(source: Path, record: Path) -> Image | None:
    """The kept measurement of ``source``; None when there is none or its copy is gone."""
    try:
        kept = json.loads(record.read_text(encoding="utf-8"))
        values = {name: kept[name] for name in MEASURED}
        copy = Path(kept["copy"]) if kept["copy"] else source
    except (OSError, ValueError, KeyError, TypeError):
        return None
    numbers = [values[name] for name in MEASURED if name not in ("format", "transparent_dark")]
    if (not isinstance(values["format"], str) or not isinstance(values["transparent_dark"], bool)
            or not all(type(n) is int and n >= 0 for n in numbers)):
        return None  # not what this module writes: measured again
    if copy != source and not copy.is_file():
        return None
    return Image(source=source, file=copy, **values)


def _write_record(record: Path, found: Image) -> None:
    """Keep ``found``; a cache folder that cannot be written is only slower."""
    from .files import write_atomically

    kept = {name: getattr(found, name) for name in MEASURED}
    kept["copy"] = str(found.file) if found.resized else None
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(record, json.dumps(kept).encode("utf-8"))
    except OSError:
        pass


def _inspect(source: Path, size: int, cache: Path, digest: str | None) -> Image:
    from PIL import Image as Pil
    from PIL import UnidentifiedImageError

    found = Image(source=source, file=source, bytes=size, original_bytes=size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Pil.DecompressionBombWarning)
            with Pil.open(source) as picture:
                width, height = _oriented_size(picture)
                found = replace(found, format=picture.format or "unknown", width=width, height=height,
                                original_width=width)
                if found.format not in MAIL_FORMATS and found.format not in PARTLY_SHOWN:
                    return replace(found, problem=f"is a {found.format} image, which mail clients "
                                   "do not show; save it as JPEG or PNG")
                if width <= LARGEST or getattr(picture, "is_animated", False) or found.format == "GIF":
                    picture.load()  # a damaged file fails here rather than in a reader's inbox
                    return replace(found, transparent_dark=_transparent_dark(picture))
                copy = _resized(source, picture, found.format, cache, digest)
            with Pil.open(copy) as small:
                return replace(found, file=copy, width=small.width, height=small.height,
                               bytes=copy.stat().st_size, transparent_dark=_transparent_dark(small))
    except UnidentifiedImageError:
        problem = "is not an image mail clients can show (JPEG, PNG or GIF); save it as one"
    except Pil.DecompressionBombError as exc:
        problem = f"is too large to read safely ({exc}); make it smaller"
    except _NoCacheFolder as exc:
        problem = f"is wider than {LARGEST:,} px and cannot be resized: {exc}"
    except (OSError, ValueError, SyntaxError) as exc:
        problem = f"cannot be read as an image ({exc}); open it and save it again"
    return replace(found, problem=problem)


def _oriented_size(picture) -> tuple[int, int]:
    width, height = picture.size
    orientation = picture.getexif().get(0x0112, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _resized(source: Path, picture, kind: str, cache: Path, digest: str | None) -> Path:
    """The copy of ``source`` at :data:`LARGEST` px wide, made once and kept in ``cache``."""
    from PIL import ImageOps

    digest = digest or _content_digest(source)
    if digest is None:
        raise OSError("the file could not be read again")
    suffix = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}[kind]
    target = _cache_folder(cache) / f"{digest}-{LARGEST}-r{RECIPE}{suffix}"
    if target.is_file():
        return target
    width, height = _oriented_size(picture)
    new_height = max(1, round(height * LARGEST / width))
    swapped = picture.size != (width, height)
    box = (new_height, LARGEST) if swapped else (LARGEST, new_height)
    if picture.mode == "P" or (kind == "JPEG" and picture.mode not in ("RGB", "L")):
        picture = picture.convert("RGBA" if kind != "JPEG" else "RGB")
    if kind == "JPEG":
        picture.draft(picture.mode, box)  # decoded at a reduced scale: little memory
    picture = picture.resize(box, reducing_gap=3.0)
    picture = ImageOps.exif_transpose(picture) or picture
    out = io.BytesIO()
    icc = picture.info.get("icc_profile")
    extra = {"icc_profile": icc} if icc else {}
    if kind == "JPEG":
        picture.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True, progressive=True, **extra)
    elif kind == "PNG":
        picture.save(out, "PNG", optimize=True, **extra)
    else:
        picture.save(out, "WEBP", quality=WEBP_QUALITY, method=5, **extra)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".resizing.")
    with os.fdopen(handle, "wb") as file:
        file.write(out.getvalue())
    os.replace(temporary, target)  # another process making the same copy writes the same bytes
    return target


class _NoCacheFolder(Exception):
    """Neither the newsletter's cache folder nor the temp folder can be written."""


def _cache_folder(preferred: Path) -> Path:
    """``preferred`` if it can be written, else a folder of this user's in the temp folder."""
    fallback = Path(tempfile.gettempdir()) / f"newsletter-images-{getattr(os, 'getuid', int)()}"
    for folder in (preferred, fallback):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
        except OSError:
            continue
    raise _NoCacheFolder(f"neither {preferred} nor {fallback} can be written; make {preferred} writable")


def _transparent_dark(picture) -> bool:
    """True for a picture mostly see-through whose visible part is dark: under Gmail's dark
    mode it sits on a dark background and can hardly be seen."""
    from PIL import ImageStat

    if "A" not in picture.getbands() and "transparency" not in picture.info:
        return False
    small = picture.copy()
    small.thumbnail((128, 128))
    rgba = small.convert("RGBA")
    alpha = rgba.getchannel("A")
    opaque = alpha.point(lambda a: 255 if a >= 128 else 0)
    total = rgba.width * rgba.height
    visible = ImageStat.Stat(opaque).sum[0] / 255
    if total == 0 or visible == 0 or visible > 0.95 * total:
        return False  # nothing to see, or hardly any background to lose
    luminance = ImageStat.Stat(rgba.convert("L"), mask=opaque).mean[0]
    return luminance < 110
