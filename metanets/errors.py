"""The one exception for input a metanetwork or zoo cannot take (the API answers 4xx); imports nothing heavy."""


class MetanetError(ValueError):
    """Bad input to zoo generation, metanet training or prediction; the message names the problem."""
