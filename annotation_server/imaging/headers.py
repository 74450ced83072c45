"""Look at a volume file's header ourselves, before any library opens it.

Why: SimpleITK follows an NRRD `data file:` line (and a MetaImage `ElementDataFile`) to whatever file it
names, so a 1 KB upload could make the server read `/proc/self/environ` or its own token secret and save
it as a label. And a few bytes of header can declare a 30000^3 volume, or a 2 MB gzip can expand to GB:
libraries allocate what the header says before they notice. So every NIfTI/NRRD/MHA file is checked here
first, with a small bounded read (the header only; for .nii.gz only the first few hundred decompressed
bytes):

- self-contained only: no detached data files (`data file`, `LIST`, `ElementDataFile` other than LOCAL,
  NIfTI `ni1` header/image pairs), else 415;
- a sane header: 1 to 7 dimensions, positive sizes, a known voxel type, else 422;
- the voxel count and byte size within `ReadLimits`, else 413: refused before anything is allocated or
  decompressed. The readers then read exactly the declared amount, so memory stays within the budget.

`inspect_volume_file` returns the format it verified, so the caller can force the matching reader instead
of letting SimpleITK pick one from the file's content.
"""

from __future__ import annotations

import gzip
import math
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from annotation_server.errors import CorruptFileError, TooLargeError, UnsupportedFormatError

DEFAULT_MAX_VOXELS = 1024**3 // 2
MAX_NIFTI_OFFSET = 16 << 20  # header + extensions; real files use 352 plus a few KB
HEADER_LIMIT = 1 << 20  # no real NRRD/MHA header is near 1 MB (Slicer's 100-segment .seg.nrrd is ~30 KB)

_NRRD_TYPE_NAMES = {
    1: "signed char,int8,int8_t,uchar,unsigned char,uint8,uint8_t",
    2: "short,short int,signed short,signed short int,int16,int16_t,ushort,unsigned short,unsigned short int,"
    "uint16,uint16_t",
    4: "int,signed int,int32,int32_t,uint,unsigned int,uint32,uint32_t,float",
    8: "longlong,long long,long long int,signed long long,signed long long int,int64,int64_t,ulonglong,"
    "unsigned long long,unsigned long long int,uint64,uint64_t,double",
}
_NRRD_TYPES = {name: size for size, names in _NRRD_TYPE_NAMES.items() for name in names.split(",")}
_NRRD_ENCODINGS = {"raw", "gzip", "gz", "bzip2", "bz2", "ascii", "text", "txt", "hex"}

_MET_TYPES = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_LONG": 4,
    "MET_ULONG": 4,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}

_NIFTI_ITEMSIZE = {2: 1, 4: 2, 8: 4, 16: 4, 64: 8, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8}


@dataclass(frozen=True)
class ReadLimits:
    """How large a volume the server agrees to read (`ANNOTATE_MAX_IMAGE_VOXELS`).

    Bytes are capped at four bytes per voxel of the voxel limit (a float32 volume at the limit), so a
    float64 header cannot double the memory the voxel limit was chosen for.
    """

    max_voxels: int = DEFAULT_MAX_VOXELS

    @property
    def max_bytes(self) -> int:
        return self.max_voxels * 4

    def check(self, name: str, shape: tuple[int, ...], itemsize: int) -> None:
        voxels = math.prod(shape)
        if voxels > self.max_voxels or voxels * itemsize > self.max_bytes:
            raise TooLargeError(
                f"'{name}' declares {'x'.join(str(n) for n in shape)} voxels of {itemsize} bytes "
                f"({voxels * itemsize / (1 << 30):.2f} GiB); the server reads at most {self.max_voxels} voxels "
                f"({self.max_bytes / (1 << 30):.2f} GiB; ANNOTATE_MAX_IMAGE_VOXELS): crop or downsample it"
            )


@dataclass(frozen=True)
class HeaderInfo:
    """What the header declared: format (`nifti`, `nrrd`, `meta`), shape and bytes per voxel."""

    format: str
    shape: tuple[int, ...]
    itemsize: int


_TEMP_PREFIX = re.compile(r"^(upload-)?[0-9a-f]{32}-(\d+-)?")


def display_name(path: Path) -> str:
    """The name a client gave its file: without the unique prefix uploads get while staged on the server."""
    return _TEMP_PREFIX.sub("", path.name) or path.name


def reason(exc: BaseException, path: Path) -> str:
    """A library's error text without the server-side folder (nibabel and ITK quote the full path)."""
    text = str(exc)
    for folder in {str(path.parent), str(path.resolve().parent)}:
        text = text.replace(folder + "/", "").replace(folder, "")
    return text.strip()[:500]


def _detached(name: str, what: str) -> UnsupportedFormatError:
    return UnsupportedFormatError(
        f"'{name}' {what}: the server only reads self-contained files (header and voxels in one file); "
        "save it as a single-file .nrrd (no 'data file' line), .mha (ElementDataFile = LOCAL) or .nii.gz"
    )


def _dims(name: str, sizes: list[int]) -> tuple[int, ...]:
    if not 1 <= len(sizes) <= 7:
        raise CorruptFileError(f"'{name}' declares {len(sizes)} dimensions; a volume has 1 to 7 (3-D expected)")
    if any(n < 1 for n in sizes):
        raise CorruptFileError(f"'{name}' declares sizes {sizes}: every axis needs at least one voxel")
    return tuple(sizes)


def _read_text_header(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(HEADER_LIMIT)


def _int_list(name: str, field: str, value: str) -> list[int]:
    try:
        return [int(v) for v in value.split()]
    except ValueError as exc:
        raise CorruptFileError(f"'{name}' has an unreadable '{field}' field: {value[:80]!r}") from exc


def inspect_nrrd(path: Path, limits: ReadLimits, name: str | None = None) -> HeaderInfo:
    name = name or display_name(path)
    head = _read_text_header(path)
    if not head.startswith(b"NRRD000"):
        raise CorruptFileError(f"'{name}' is not an NRRD file (no NRRD magic at its start)")
    end = head.find(b"\n\n")
    end_crlf = head.find(b"\r\n\r\n")
    if end < 0 and end_crlf < 0:
        raise CorruptFileError(
            f"'{name}' has no voxel data after its header (truncated, or a detached .nhdr header?); the server "
            "only reads self-contained files: save a single-file .nrrd or .nii.gz"
        )
    end = min(e for e in (end, end_crlf) if e >= 0)
    fields: dict[str, str] = {}
    for raw in head[:end].decode("latin-1").splitlines()[1:]:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition(":")
        field = "".join(key.split()).lower()
        if field == "datafile":  # checked on `key:=value` lines too: never guess how a reader parses them
            fields[field] = value.lstrip("=").strip()
            break
        if not sep:
            raise CorruptFileError(f"'{name}' has a malformed header line: {line[:80]!r}")
        if value.startswith("="):
            continue  # `key:=value` pairs are metadata only
        fields[field] = value.strip()
    if "datafile" in fields:
        raise _detached(name, f"names a separate data file ({fields['datafile'][:60]!r})")
    encoding = fields.get("encoding", "raw").lower()
    if encoding not in _NRRD_ENCODINGS:
        raise UnsupportedFormatError(f"'{name}' uses NRRD encoding '{encoding}'; use raw, gzip or bzip2")
    itemsize = _NRRD_TYPES.get(fields.get("type", "").lower())
    if not itemsize:
        raise CorruptFileError(f"'{name}' has an unknown or missing NRRD type {fields.get('type')!r}")
    sizes = _int_list(name, "sizes", fields.get("sizes", ""))
    try:
        dimension = int(fields.get("dimension", "-1"))
    except ValueError:
        dimension = -1
    if dimension != len(sizes):
        raise CorruptFileError(f"'{name}': NRRD dimension {fields.get('dimension')!r} does not match sizes {sizes}")
    shape = _dims(name, sizes)
    limits.check(name, shape, itemsize)
    return HeaderInfo("nrrd", shape, itemsize)


def inspect_meta(path: Path, limits: ReadLimits, name: str | None = None) -> HeaderInfo:
    name = name or display_name(path)
    head = _read_text_header(path)
    fields: dict[str, str] = {}
    data_file: str | None = None
    for raw in head.split(b"\n"):
        line = raw.decode("latin-1").strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise CorruptFileError(f"'{name}' is not a MetaImage (.mha) file: header line {line[:60]!r}")
        key, value = key.strip(), value.strip()
        if key == "ElementDataFile":
            data_file = value
            break  # the voxels start after this line
        fields[key] = value
    if data_file is None:
        raise CorruptFileError(f"'{name}' is not a complete MetaImage file (no ElementDataFile line in its header)")
    if data_file.upper() != "LOCAL":
        raise _detached(name, f"names a separate data file ({data_file[:60]!r})")
    itemsize = _MET_TYPES.get(fields.get("ElementType", "").upper())
    if not itemsize:
        raise CorruptFileError(f"'{name}' has an unknown or missing ElementType {fields.get('ElementType')!r}")
    channels = _int_list(name, "ElementNumberOfChannels", fields.get("ElementNumberOfChannels", "1"))
    sizes = _int_list(name, "DimSize", fields.get("DimSize", ""))
    shape = _dims(name, sizes)
    limits.check(name, shape, itemsize * max(channels[:1] or [1]))
    return HeaderInfo("meta", shape, itemsize)


def _nifti_header_bytes(path: Path, name: str) -> bytes:
    """The first 540 bytes, decompressing only that much of a .nii.gz."""
    with path.open("rb") as raw:
        magic = raw.read(2)
    try:
        if magic == b"\x1f\x8b":
            with gzip.open(path, "rb") as handle:
                return handle.read(540)
        with path.open("rb") as handle:
            return handle.read(540)
    except (OSError, EOFError, zlib.error) as exc:
        raise CorruptFileError(
            f"cannot read NIfTI header of '{name}' (truncated or damaged?): {reason(exc, path)}"
        ) from exc


def inspect_nifti(path: Path, limits: ReadLimits, name: str | None = None) -> HeaderInfo:
    name = name or display_name(path)
    block = _nifti_header_bytes(path, name)
    if len(block) < 348:
        raise CorruptFileError(f"'{name}' is too short for a NIfTI header ({len(block)} bytes)")
    for endian in "<>":
        sizeof_hdr = struct.unpack(f"{endian}i", block[:4])[0]
        if sizeof_hdr == 348:
            dims = struct.unpack(f"{endian}8h", block[40:56])
            datatype = struct.unpack(f"{endian}h", block[70:72])[0]
            offset = struct.unpack(f"{endian}f", block[108:112])[0]
            magic = block[344:348]
            single = b"n+1\x00"
            break
        if sizeof_hdr == 540 and len(block) >= 540:
            dims = struct.unpack(f"{endian}8q", block[16:80])
            datatype = struct.unpack(f"{endian}h", block[12:14])[0]
            offset = struct.unpack(f"{endian}q", block[168:176])[0]
            magic = block[4:12][:4]
            single = b"n+2\x00"
            break
    else:
        raise CorruptFileError(f"'{name}' is not a NIfTI file (header size field is neither 348 nor 540)")
    if magic != single:
        if magic[:3] in (b"ni1", b"ni2"):
            raise _detached(name, "is a NIfTI header whose voxels live in a separate .img file")
        raise CorruptFileError(f"'{name}' has no NIfTI magic (an Analyze file?); save it as .nii.gz")
    if not 0 <= offset <= MAX_NIFTI_OFFSET:  # a huge offset would make a .nii.gz reader inflate GBs to skip
        raise CorruptFileError(
            f"'{name}' puts its voxels at byte {offset:.0f}; a NIfTI header with extensions ends "
            f"well before {MAX_NIFTI_OFFSET}"
        )
    ndim = dims[0]
    if not 1 <= ndim <= 7:
        raise CorruptFileError(f"'{name}' declares dim[0] = {ndim}; a NIfTI volume has 1 to 7 dimensions")
    shape = _dims(name, list(dims[1 : ndim + 1]))
    itemsize = _NIFTI_ITEMSIZE.get(datatype)
    if itemsize is None:
        raise UnsupportedFormatError(f"'{name}' has NIfTI datatype {datatype}; use an integer or float type")
    limits.check(name, shape, itemsize)
    return HeaderInfo("nifti", shape, itemsize)


def inspect_volume_file(path: Path, ext: str, limits: ReadLimits, name: str | None = None) -> HeaderInfo:
    """Check the header of a file with extension `ext` (see module doc). Raises 4xx domain errors."""
    if ext in (".nii", ".nii.gz"):
        return inspect_nifti(path, limits, name)
    if ext in (".nrrd", ".seg.nrrd"):
        return inspect_nrrd(path, limits, name)
    if ext == ".mha":
        return inspect_meta(path, limits, name)
    raise UnsupportedFormatError(f"'{name or display_name(path)}' is not a format the server reads")
