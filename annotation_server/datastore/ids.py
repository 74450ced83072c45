"""Validation of image ids and label tags.

Ids and tags become file and folder names, so they are checked before they touch the file system: no
path separators, nothing starting with a dot, no control characters. `../../etc/passwd` is refused
with a message, never resolved.
"""

from __future__ import annotations

import re

from annotation_server.errors import InvalidRequestError

# Word characters (any script), digits and a few punctuation marks seen in real study names
# (e.g. 3D Slicer node names such as "6: CT abdomen (venous)"). No '/', '\\' or leading '.'.
_ID_PATTERN = re.compile(r"^[\w][\w .,:;@#+=~()\[\]-]{0,199}$")
_TAG_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


def validate_image_id(image_id: str) -> str:
    """Return `image_id` if it is a safe, single-component name; raise InvalidRequestError otherwise."""
    if not isinstance(image_id, str) or not image_id:
        raise InvalidRequestError(
            "image id is empty; pass the id of a datastore image (see GET /datastore/?output=all)"
        )
    if not _ID_PATTERN.match(image_id) or image_id.endswith((" ", ".")) or ".." in image_id:
        raise InvalidRequestError(
            f"invalid image id {image_id!r}: ids are file names without folders (letters, digits, space and "
            "._-:;,@#+=~()[]), not starting with '.' and at most 200 characters"
        )
    return image_id


def validate_tag(tag: str) -> str:
    """Return the label tag, refusing anything that is not a plain folder name."""
    if not tag or not _TAG_PATTERN.match(tag) or ".." in tag:
        raise InvalidRequestError(
            f"invalid label tag {tag!r}: use letters, digits and ._- (e.g. 'final', 'original', 'reviewer-2')"
        )
    return tag


def is_valid_image_id(image_id: str) -> bool:
    try:
        validate_image_id(image_id)
    except InvalidRequestError:
        return False
    return True
