"""The list file a .data key (train=, valid=) names: its entries, each an image found by config.locate_path's
rules, with errors that point at the list line."""
from __future__ import annotations

import os

from darknetpy.config import ListEntry, locate_path, read_list_entries
from darknetpy.errors import DataError


def read_image_list(list_path: str, key: str) -> list[ListEntry]:
    """The entries of the list file that `key=` names; a DataError when it has none."""
    entries = read_list_entries(list_path)
    if not entries:
        raise DataError(f"list file ({key}=) has no entries", list_path)
    return entries


def locate_image(entry: ListEntry, data_dir: str, list_path: str) -> str:
    """The image file a list entry names (relative to the working directory, then to the .data folder); a
    DataError at the entry's line when there is none."""
    found = locate_path(entry.text, data_dir)
    if found is None:
        raise DataError(f"image {entry.text!r} not found (relative to the working directory {os.getcwd()} "
                        f"or to {data_dir})", list_path, entry.line)
    return found
