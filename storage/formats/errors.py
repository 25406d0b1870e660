"""Errors raised when an uploaded file is refused; each names its problem type for the API."""


class CheckpointRejected(ValueError):
    """An upload that cannot be accepted. `kind` becomes the problem type slug, `status` the HTTP code."""

    kind = "invalid-checkpoint"
    status = 422

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class InvalidCheckpoint(CheckpointRejected):
    """Malformed or inconsistent file contents."""


class UnsafeCheckpoint(CheckpointRejected):
    """A file whose loading would run code or that the safe loader refused."""

    kind = "unsafe-checkpoint"


class UnsupportedFormat(CheckpointRejected):
    """A file in a format we do not read (legacy pickle, a zip that is not PyTorch's, unknown bytes)."""

    kind = "unsupported-format"
    status = 415


class EmptyUpload(CheckpointRejected):
    kind = "empty-upload"
    status = 400


class InvalidBundle(CheckpointRejected):
    """A multi-file upload whose files do not form one checkpoint (bad index, missing shard, bad names)."""

    kind = "invalid-bundle"
