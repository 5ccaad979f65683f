"""Exception types that the CLI turns into one-line messages.

Every message names the file (or source) and the problem, so the CLI never needs a traceback.
"""

from __future__ import annotations


class Glm4LocalError(Exception):
    """Base for every error a user can cause; the CLI prints str(error) and exits 1."""

    exit_code = 1


class SourceError(Glm4LocalError):
    """The checkpoint folder or Hub id cannot be resolved or read."""


class SourceNotCachedError(SourceError):
    """A Hub repo id that is neither a folder nor in the local Hugging Face cache."""

    def __init__(self, message: str, repo_id: str) -> None:
        super().__init__(message)
        self.repo_id = repo_id


class CheckpointError(Glm4LocalError):
    """The checkpoint is of the wrong architecture, or its files are malformed."""


class OutputError(Glm4LocalError):
    """The output cannot be written (exists, folder not writable, disk full)."""


class OutputExistsError(OutputError):
    """The output file exists and overwriting was not asked for."""


class GGUFFileError(Glm4LocalError):
    """A GGUF file is missing, corrupt, or not a GLM-4 model."""


class StoreError(Glm4LocalError):
    """A model cannot be pulled, found or removed: a name of no known form, the Hub unreachable or without
    it, a download that does not match the Hub's checksum, a full disk."""


class NoModelError(Glm4LocalError):
    """No model at all in the folders searched (a first run): a front-end may offer to pull one."""


class VerifyError(Glm4LocalError):
    """A file failed its check: a model outside its type's limits against the reference, or a repaired
    vocabulary that still tokenizes differently. Exit status 2, as other checking tools use."""

    exit_code = 2


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, or a termination signal turned into one so that the same cleanup runs (`signal_number`:
    the signal, for the exit status); its message, when it has one, says what was kept."""

    def __init__(self, message: str = "", signal_number: int = 2) -> None:
        super().__init__(message)
        self.signal_number = signal_number
