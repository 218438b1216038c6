"""Reading Darknet text inputs: .cfg files (grammar -> Document -> typed sections), [net], .data and lists."""
from darknetpy.config.datafile import (DataConfig, ListEntry, folder_of, locate_image, locate_path, read_data_file,
                                      read_image_list, read_list_entries, read_list_file, resolve_path)
from darknetpy.config.document import Document, Option, Section
from darknetpy.config.grammar import parse_cfg, parse_cfg_text
from darknetpy.config.net import NetConfig, learning_rate_at
from darknetpy.config.options import SectionReader

__all__ = [
    "Document", "Section", "Option", "parse_cfg", "parse_cfg_text", "SectionReader", "NetConfig",
    "learning_rate_at", "DataConfig", "read_data_file", "read_list_file", "read_list_entries", "ListEntry",
    "read_image_list", "locate_path", "locate_image", "resolve_path", "folder_of",
]
