"""One exception family, so the CLI can turn every user mistake into a clear message and exit 2."""


class UnbackdoorError(Exception):
    """A problem with the user's input (data, config, model path), not a bug."""


class DataError(UnbackdoorError):
    pass


class ConfigError(UnbackdoorError):
    pass


class ModelError(UnbackdoorError):
    pass


class MissingParaphraseError(DataError):
    def __init__(self, missing: int, total: int, hint: str = ""):
        self.missing, self.total = missing, total
        super().__init__(
            f"{missing} of {total} texts have no paraphrase in the bank and no generator is configured"
            + (f"; {hint}" if hint else "")
        )
