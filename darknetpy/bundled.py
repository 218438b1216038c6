"""The networks that come with darknetpy: the repository's top-level `cfg/` and `weights/` folders.

A built wheel carries copies of them inside the package (`darknetpy/networks/cfg`, `darknetpy/networks/weights`,
put there by the build step in setup.py); a source checkout or an editable install (`pip install -e .`)
reads them where they are, beside the package. Commands and `darknetpy.load` accept a bare name for them:
`darknetpy summary vgg-16` finds `cfg/vgg-16.cfg`, and a weights argument `digits-seg` finds
`weights/digits-seg.weights`. A path that exists, or that names a folder, is always taken as written.
"""
from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
#: where bundled files are looked for, in order: inside an installed wheel, then a source checkout
ROOTS = (_PACKAGE / "networks", _PACKAGE.parent)

#: the bundled kinds of file: folder and the extensions a bare name may leave out
KINDS = {"cfg": ("cfg", (".cfg",)), "weights": ("weights", (".weights",)), "names": ("weights", (".names",))}


def bundled_file(name: str | os.PathLike, kind: str) -> Path | None:
    """The bundled file of `kind` ("cfg", "weights" or "names") called `name` (with or without its
    extension), or None."""
    folder, extensions = KINDS[kind]
    text = os.fspath(name)
    if not text or os.sep in text or (os.altsep and os.altsep in text):
        return None
    for root in ROOTS:
        for candidate in (text, *(text + ext for ext in extensions if not text.endswith(ext))):
            path = root / folder / candidate
            if path.is_file():
                return path
    return None


def resolve(path: str | os.PathLike | None, kind: str) -> str | os.PathLike | None:
    """`path` itself when it exists (or is not a bare name), else the bundled file it names, else `path`
    unchanged (so the error names what was written)."""
    if path is None or os.path.exists(path):
        return path
    found = bundled_file(path, kind)
    return str(found) if found is not None else path


def bundled_names(kind: str) -> list[str]:
    """The bare names of the bundled files of `kind`, for listings and messages."""
    folder, extensions = KINDS[kind]
    names: set[str] = set()
    for root in ROOTS:
        directory = root / folder
        if directory.is_dir():
            names.update(p.name.removesuffix(extensions[0]) for p in directory.iterdir()
                         if p.is_file() and p.name.endswith(extensions))
    return sorted(names)
