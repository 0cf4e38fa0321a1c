"""The errors of the experiment services."""


class ExperimentError(Exception):
    """A lifecycle request that cannot be carried out; the message says why, in words for a merchandiser."""


class ExperimentNotFound(ExperimentError):
    pass
