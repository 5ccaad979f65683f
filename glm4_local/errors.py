"""Exception types that the CLI turns into one-line messages.

Every message names the file (or source) and the problem, so the CLI never needs a traceback.
"""

from __future__ import annotations


class Glm4LocalError(Exception):
    """Base for every error a user can cause; the CLI prints str(error) and exits 1."""

    exit_code = 1


class SourceError(Glm4LocalError):
    """The checkpoint folder or Hub id cannot be resolved or read."""


class CheckpointError(Glm4LocalError):
    """The checkpoint is of the wrong architecture, or its files are malformed."""


class OutputError(Glm4LocalError):
    """The output cannot be written (exists, folder not writable, disk full)."""


class GGUFFileError(Glm4LocalError):
    """A GGUF file is missing, corrupt, or not a GLM-4 model."""


class VerifyError(Glm4LocalError):
    """A converted model disagrees with the reference beyond the limits of its type."""

    exit_code = 2
