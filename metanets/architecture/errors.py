"""The one exception raised when a checkpoint cannot be understood (the API answers 422)."""


class ArchitectureError(ValueError):
    """A checkpoint, hint or declarative architecture that cannot be turned into a description.

    ``problems`` lists one human-readable line per fault, each naming the tensor, hint or op concerned.
    """

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))
