"""The one exception type the command line turns into a readable message."""

__all__ = ["CacxrError", "missing_dependency"]


class CacxrError(Exception):
    """A problem the user can fix (bad path, bad file, bad option); printed without a traceback."""


def missing_dependency(package: str, extra: str) -> CacxrError:
    """Error for an optional dependency that is not installed, with the install hint."""
    return CacxrError(
        f"this feature needs the optional package '{package}': pip install 'cacxr[{extra}]'"
    )
