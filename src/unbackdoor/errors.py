"""One exception family, so the CLI can turn every user mistake into a clear message and exit 2."""


class UnbackdoorError(Exception):
    """A problem with the user's input (data, config, model path), not a bug."""


class DataError(UnbackdoorError):
    pass


class ConfigError(UnbackdoorError):
    pass


class UnknownName(ConfigError, KeyError):
    """A name no registry holds. A KeyError too, so that `registry.get(name)` returns None."""

    __str__ = Exception.__str__  # KeyError's would quote the message


class PluginError(ConfigError):
    """A plug-in (entry point or built-in module) that cannot be loaded or clashes with another."""


class ModelError(UnbackdoorError):
    pass


class BaseModelError(ModelError):
    """theta_base (the clean model the victim was fine-tuned from) is unknown or unusable."""


BASE_HINT = ("pass --base-model NAME_OR_PATH (the clean pre-trained model the victim was fine-tuned from; "
             "base_model in a config file), or drop RGA's L2 term with -s rga.beta=0")


class HubError(UnbackdoorError):
    """The Hugging Face Hub cannot be reached (offline mode, no network, not logged in)."""


class DivergenceError(UnbackdoorError):
    """Loss or logits became non-finite; the last finite checkpoint is kept."""


class Interrupted(UnbackdoorError):
    """SIGINT/SIGTERM: a checkpoint was saved; the CLI exits 130."""


class MissingParaphraseError(DataError):
    def __init__(self, missing: int, total: int, hint: str = ""):
        self.missing, self.total = missing, total
        super().__init__(
            f"{missing} of {total} texts have no paraphrase in the bank and no generator is configured"
            + (f"; {hint}" if hint else "")
        )
