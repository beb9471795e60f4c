"""Path guards shared by every command: regular files only, no silent overwrite, nothing under DATA.

- :func:`file_kind` says what a path is without opening it: a FIFO would block the first ``open``
  forever and a link to ``/dev/zero`` never ends, so readers and folder walks skip anything that is
  not a regular file (following links).
- :func:`refuse_overwrite` refuses to replace an existing file unless the user passed ``--overwrite``.
- :func:`refuse_inside` refuses an output path inside a data folder (DATA is only ever read).

Refusals are :class:`cacxr.core.errors.CacxrError` with one line naming the path: the command line prints
it and exits with code 2.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from cacxr.core.errors import CacxrError

__all__ = ["data_roots", "file_kind", "is_regular_file", "refuse_overwrite", "refuse_inside"]

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a folder"),
)


def file_kind(path: str | os.PathLike[str]) -> str:
    """What ``path`` is when it is not a regular file, without opening it.

    Args:
        path: any path.

    Returns:
        "" for a regular file (or a link to one); else a description such as "a FIFO (named pipe)",
        "a symbolic link to a character device", "a broken symbolic link" or "missing".
    """
    try:
        link = stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return "missing"
    try:
        mode = os.stat(path).st_mode  # follows links
    except OSError:
        return "a broken symbolic link" if link else "missing"
    if stat.S_ISREG(mode):
        return ""
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    return f"a symbolic link to {kind}" if link else kind


def is_regular_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a regular file, or a link to one (never opens it)."""
    return file_kind(path) == ""


def refuse_overwrite(path: str | os.PathLike[str] | None, overwrite: bool, flag: str = "--overwrite") -> None:
    """Refuse to replace an existing file (or anything else at ``path``) unless ``overwrite``.

    Args:
        path: the output the command is about to write (None: nothing to check).
        overwrite: the user asked to replace it.
        flag: the option that allows it, for the message.

    Raises:
        CacxrError: ``path`` exists (a folder is never replaced, even with ``overwrite``).
    """
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise CacxrError(f"{target}: is a folder; give a file name to write")
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise CacxrError(f"{target}: already exists; not replacing it (pass {flag} to replace it)")


def data_roots(sources: Iterable[tuple[str | os.PathLike[str], str]]) -> set[Path]:
    """The data folders a set of images comes from: the folder holding each image's patient folder.

    Ingest names a patient after its folder (``DATA/<patient>/rx/IM-1.dcm``), so DATA is the parent of
    the nearest ancestor named like the patient. Images outside such a folder (hand-made manifests)
    name no data folder.

    Args:
        sources: ``(image path, patient id)`` pairs (absolute paths, or relative to the working folder).

    Returns:
        The resolved data folders.
    """
    roots: set[Path] = set()
    for path, patient_id in sources:
        image = Path(path).absolute()
        folder = next((p for p in image.parents if patient_id and p.name == patient_id), None)
        if folder is not None:
            roots.add(folder.parent.resolve())
    return roots


def refuse_inside(
    path: str | os.PathLike[str], data_dirs: Iterable[str | os.PathLike[str]], what: str = "the output"
) -> None:
    """Refuse an output path equal to, or inside, one of ``data_dirs`` (after resolving links).

    Args:
        path: where the command would write.
        data_dirs: folders that are only ever read.
        what: how to name the output in the message (e.g. "the store (--store)").

    Raises:
        CacxrError: ``path`` lies inside a data folder.
    """
    target = Path(path).resolve()
    for data in data_dirs:
        root = Path(data).resolve()
        if target == root or root in target.parents:
            raise CacxrError(
                f"{path}: {what} may not be inside the data folder {data}; DATA is never written to"
            )
