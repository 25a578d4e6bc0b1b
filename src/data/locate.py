"""Finding a dataset's files on disk, and the error raised when they are not there.

A dataset is searched for under a list of *base* directories, in order: the ``root``
argument, the dataset's environment variable, then any system-wide location (e.g. where a
Debian package installs it). Under each base a few *layouts* (sub-directories) are tried,
so both "the files themselves" and "a torchvision-style root holding them" work.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# A required entry is one relative path, or a tuple of alternatives (e.g. raw or ``.gz``).
Required = str | tuple[str, ...]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files were not found; the message lists where we looked and how to get them."""


def search_bases(root: str | os.PathLike | None, env_var: str | None) -> tuple[list[tuple[Path, str]], list[str]]:
    """User-chosen base directories (``root``, then ``$env_var``), each with where it came from.

    Returns ``(bases, notes)``; ``notes`` records sources that contributed nothing (an unset
    environment variable) so the not-found message can say so.
    """
    bases: list[tuple[Path, str]] = []
    notes: list[str] = []
    if root is not None:
        bases.append((Path(root).expanduser(), "data.root"))
    if env_var is not None:
        if os.environ.get(env_var):
            bases.append((Path(os.environ[env_var]).expanduser(), f"${env_var}"))
        else:
            notes.append(f"${env_var} is not set")
    return bases, notes


def not_found_message(
    dataset: str, checked: Sequence[tuple[Path, str]], notes: Sequence[str], expected: str, how_to_get: str
) -> str:
    """The text of a :class:`DatasetNotFoundError`: what was expected, where, and the remedy."""
    lines = [f"{dataset}: dataset files not found.", f"Expected {expected}.", "Looked in:"]
    lines += [f"  - {path}  ({origin})" for path, origin in checked] or ["  (nowhere: no location given)"]
    lines += [f"  ({note})" for note in notes]
    lines.append(f"To get the data: {how_to_get}")
    return "\n".join(lines)


def _present(directory: Path, entry: Required) -> bool:
    alternatives = (entry,) if isinstance(entry, str) else entry
    return any((directory / name).exists() for name in alternatives)


def _describe(entry: Required) -> str:
    return entry if isinstance(entry, str) else " or ".join(entry)


@dataclass(frozen=True)
class FileLayout:
    """Where a dataset's files may live and how a complete copy is recognised.

    required: entries that must all exist in a directory for it to hold the dataset.
    env_var: environment variable naming a base directory (checked after ``root``).
    subdirs: layouts tried under every base, in order; ``""`` is the base itself.
    system_dirs: fixed directories checked last, as they are (no ``subdirs``).
    how_to_get: instructions shown when nothing is found.
    """

    required: tuple[Required, ...]
    env_var: str | None = None
    subdirs: tuple[str, ...] = ("",)
    system_dirs: tuple[str, ...] = ()
    how_to_get: str = ""

    def find(self, dataset: str, root: str | os.PathLike | None) -> Path:
        """The first directory holding every required entry; raises :class:`DatasetNotFoundError`,
        and ValueError naming data.root when ``root`` is a file."""
        bases, notes = search_bases(root, self.env_var)
        if root is not None and bases[0][0].exists() and not bases[0][0].is_dir():
            # these files live in a directory: searching on would use another copy unasked
            raise ValueError(
                f"data.root: {str(root)!r} is a file, not a directory; give the directory that holds the "
                f"{dataset} files (or leave data.root unset)"
            )
        checked = [(base / sub, origin) for base, origin in bases for sub in self.subdirs]
        checked += [(Path(d), "default location") for d in self.system_dirs]
        for directory, _ in checked:
            if all(_present(directory, entry) for entry in self.required):
                return directory
        expected = "all of: " + ", ".join(_describe(entry) for entry in self.required)
        raise DatasetNotFoundError(not_found_message(dataset, checked, notes, expected, self.how_to_get))
