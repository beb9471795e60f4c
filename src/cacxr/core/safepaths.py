"""Path guards shared by every command: regular files only, no silent overwrite, nothing under DATA.

- :func:`file_kind` says what a path is without opening it: a FIFO would block the first ``open``
  forever and a link to ``/dev/zero`` never ends, so readers and folder walks skip anything that is
  not a regular file (following links).
- :func:`refuse_overwrite` refuses to replace an existing file unless the user passed ``--overwrite``, and
  never replaces anything but a regular file (a FIFO or a device node stays, whatever the flag).
- :func:`require_writable` checks, before any work, that an output can be written where it is asked for
  (no file in the way of a folder, not a pseudo file system such as /proc, permission to create).
- :func:`refuse_inside` refuses an output path inside a data folder (DATA is only ever read).

Refusals are :class:`cacxr.core.errors.CacxrError` with one line naming the path: the command line prints
it and exits with code 2.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

from cacxr.core.errors import CacxrError

__all__ = ["data_roots", "file_kind", "is_regular_file", "refuse_overwrite", "refuse_inside", "require_writable"]

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
        CacxrError: ``path`` exists (a folder, a FIFO, a socket or a device node is never replaced, even
            with ``overwrite``: only a regular file is; a symbolic link to a regular file is replaced by the
            new file, the file it pointed to is left as it was).
    """
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise CacxrError(f"{target}: is a folder; give a file name to write")
    if not (target.exists() or target.is_symlink()):
        return
    kind = file_kind(target)
    if kind not in ("", "a broken symbolic link"):
        raise CacxrError(f"{target}: is {kind}, not a regular file; not replacing it, even with {flag}")
    if not overwrite:
        raise CacxrError(f"{target}: already exists; not replacing it (pass {flag} to replace it)")


def require_writable(path: str | os.PathLike[str] | None, what: str = "the output", folder: bool = False) -> None:
    """Refuse, before any work, an output that could not be written at the end.

    Walks up from ``path`` (its parent for a file) to the nearest existing folder and creates and removes
    a probe file there: the one test that is right on every file system (``/proc`` and ``/sys`` accept
    ``os.access`` but refuse to create files). Nothing is left behind; missing folders are not created.

    Args:
        path: the output file (or, with ``folder``, the output folder); None: nothing to check.
        what: how to name the output in the message (e.g. "the predictions (--out)").
        folder: ``path`` is a folder the command writes into.

    Raises:
        CacxrError: one line naming the path and why it cannot be written.
    """
    if path is None:
        return
    target = Path(path)
    start = target if folder else target.parent
    for candidate in (start, *start.parents):
        if candidate.is_dir():
            break
        if candidate.exists() or candidate.is_symlink():
            kind = file_kind(candidate) or "a file"
            raise CacxrError(f"{target}: cannot write {what}: {candidate} is {kind}, not a folder")
    else:  # pragma: no cover - the root always exists
        candidate = Path(".")
    try:
        handle, probe = tempfile.mkstemp(prefix=".cacxr-write-test-", dir=candidate)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise CacxrError(f"{target}: cannot write {what} in {candidate}: {reason}") from None
    os.close(handle)
    os.unlink(probe)


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
