"""Reading untrusted files within bounds: memory caps, bounded decompression, data files kept in their folder.

Every format reader goes through these helpers before allocating an array:

- :func:`max_read_bytes` is the most a volume may take in memory: the available memory divided by the
  copies a read makes, or the cap set by the ``SSCCE_MAX_VOLUME_GB`` environment variable when smaller;
- :func:`inflate_bounded` decompresses gzip / zlib / bzip2 payloads chunk by chunk and stops as soon as the
  output would exceed what the header declares: a decompression bomb is refused after inflating at most
  the declared size (itself bounded by memory), a payload that does not inflate is an error, never zeros;
- :func:`contained_data_file` accepts a detached data file (NRRD ``data file``, MetaImage
  ``ElementDataFile``, HDF5 external storage) only when it is a regular file inside the input's own
  folder, after resolving symlinks.
"""

from __future__ import annotations

import bz2
import os
import stat
import zlib
from pathlib import Path

from napari_sscce.io.errors import VolumeError

#: environment variable capping the bytes a volume may take in memory (in GB, decimal)
MAX_VOLUME_ENV = "SSCCE_MAX_VOLUME_GB"
#: a volume and one reordered copy are in memory while it is read
READ_COPIES = 2
#: compressed bytes fed to a decompressor per step
CHUNK = 1 << 20


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (psutil when installed, else ``os.sysconf``)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def memory_cap() -> int | None:
    """The cap of ``SSCCE_MAX_VOLUME_GB`` in bytes, or None when unset.

    Raises
    ------
    ValueError
        When the variable is set but not a positive number.
    """
    text = os.environ.get(MAX_VOLUME_ENV, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"{MAX_VOLUME_ENV}={text!r}: expected a positive number of GB, e.g. 8")
    return int(value * 1e9)


def max_read_bytes(copies: int = READ_COPIES) -> int | None:
    """The most bytes one array may take: available memory / ``copies``, or the configured cap if smaller."""
    free = available_memory()
    bound = None if free is None else free // max(1, copies)
    cap = memory_cap()
    if cap is not None:
        bound = cap if bound is None else min(bound, cap)
    return bound


def human_bytes(n: float) -> str:
    """``1536`` -> ``"1536 bytes"``, MiB from 256 KiB, GiB from 256 MiB."""
    if n >= 2**28:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.1f} MiB" if n >= 2**18 else f"{n:.0f} bytes"


def check_allocation(path: str | os.PathLike | None, nbytes: int, what: str, copies: int = 1) -> None:
    """Refuse allocating ``nbytes`` (times ``copies``) when that exceeds :func:`max_read_bytes`.

    Raises
    ------
    VolumeError
        Naming ``path``, ``what`` would be allocated, how much and the bound.
    """
    bound = max_read_bytes(copies=1)
    needed = int(nbytes) * int(copies)
    if bound is not None and needed > bound:
        source = f"the {MAX_VOLUME_ENV} cap / available memory"
        raise VolumeError(path, f"{what} would need about {human_bytes(needed)} of memory, more than "
                                f"{human_bytes(bound)} ({source})")


def inflate_bounded(path: Path, stream, encoding: str, expected: int) -> bytes:
    """Decompress ``stream`` and return exactly ``expected`` bytes, never inflating more than that.

    Parameters
    ----------
    path : pathlib.Path
        The file (named in messages).
    stream : binary file object
        Positioned at the first compressed byte.
    encoding : {"gzip", "zlib", "bzip2"}
        ``"gzip"`` also accepts a zlib header (auto-detected).
    expected : int
        Bytes the header declares.

    Raises
    ------
    VolumeError
        When the payload inflates to more than declared (a decompression bomb or a wrong header), to less
        (truncated), or is not valid compressed data.
    """
    if encoding == "bzip2":
        decomp = bz2.BZ2Decompressor()
    else:
        decomp = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header
    out = bytearray()
    limit = expected + 1
    pending = b""
    try:
        while True:
            if encoding == "bzip2":
                if decomp.eof:
                    break
                chunk = stream.read(CHUNK) if decomp.needs_input else b""
                if not chunk and decomp.needs_input:
                    break
                out += decomp.decompress(chunk, max_length=limit - len(out))
            else:
                if decomp.eof:
                    break
                chunk = pending or stream.read(CHUNK)
                if not chunk:
                    break
                out += decomp.decompress(chunk, limit - len(out))
                pending = decomp.unconsumed_tail
            if len(out) > expected:
                raise VolumeError(path, f"its {encoding} data inflate to more than the "
                                        f"{human_bytes(expected)} its header declares (a decompression bomb "
                                        "or a wrong header); refused before inflating the rest")
    except (OSError, EOFError, zlib.error) as exc:
        raise VolumeError(path, f"its {encoding} data are corrupt ({exc}); nothing was read") from exc
    if len(out) < expected:
        raise VolumeError(path, f"its {encoding} data inflate to only {human_bytes(len(out))} but its header "
                                f"declares {human_bytes(expected)}: the file is truncated or corrupt")
    return bytes(out)


def contained_data_file(path: Path, name: str, what: str) -> Path:
    """The detached data file ``name`` of ``path``, refused unless it is a regular file in ``path``'s folder.

    Parameters
    ----------
    path : pathlib.Path
        The header file.
    name : str
        The data file as written in the header (relative to the header's folder, or absolute).
    what : str
        The header field, for messages (e.g. ``"data file"``).

    Raises
    ------
    VolumeError
        A data file outside the header's folder (also through a symlink or ``..``), a list or pattern of
        files, a missing file, or not a regular file (a device such as ``/dev/zero``, a folder, a FIFO).
    """
    text = str(name).strip()
    if not text or text.upper() == "LIST" or "%" in text or " " in text and text.split()[-1].isdigit():
        raise VolumeError(path, f"its {what} {text!r} is a list or pattern of files; napari-sscce reads one "
                                "data file next to the header")
    folder = path.parent.resolve()
    candidate = Path(text) if os.path.isabs(text) else path.parent / text
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise VolumeError(path, f"its {what} {text!r} does not exist ({exc})") from exc
    if not resolved.is_relative_to(folder):
        raise VolumeError(path, f"its {what} {text!r} resolves to {resolved}, outside the header's folder "
                                f"{folder}; refused (data files must lie next to their header)")
    mode = resolved.stat().st_mode
    if not stat.S_ISREG(mode):
        raise VolumeError(path, f"its {what} {text!r} is not a regular file (a device, folder or pipe); "
                                "refused")
    return resolved
