"""File-name extensions the server understands, and how a name splits into id and extension.

Extensions are matched longest first so that `case.seg.nrrd` is a `.seg.nrrd` and `ct.nii.gz` a `.nii.gz`.
Only the last path component of a client's file name counts: 3D Slicer sends full local paths, with
backslashes on Windows.
"""

from __future__ import annotations

from annotation_server.errors import UnsupportedFormatError

NIFTI_EXTENSIONS = (".nii.gz", ".nii")
ITK_EXTENSIONS = (".seg.nrrd", ".nrrd", ".mha")
IMAGE_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha")
LABEL_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".mha")
_ALL_KNOWN = sorted({*IMAGE_EXTENSIONS, *LABEL_EXTENSIONS}, key=len, reverse=True)


def basename(filename: str) -> str:
    """The last component of a client-supplied path, whichever separator the client's OS uses."""
    return filename.replace("\\", "/").rsplit("/", 1)[-1]


def split_extension(filename: str, allowed: tuple[str, ...] | None = None) -> tuple[str, str]:
    """Split `filename` into (stem, extension) using the known multi-part extensions.

    Raises UnsupportedFormatError naming the formats we do read when the extension is not allowed.
    """
    name = basename(filename)
    candidates = allowed if allowed is not None else tuple(_ALL_KNOWN)
    lower = name.lower()
    for ext in sorted(candidates, key=len, reverse=True):
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], ext
    supported = ", ".join(candidates)
    raise UnsupportedFormatError(f"'{name}' is not a supported file type; use one of: {supported}")
