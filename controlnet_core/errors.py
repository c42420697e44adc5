"""Errors a user can act on. Each message names the file, the problem and the fix."""


class ControlNetError(Exception):
    """Base class for every error ControlNet Suite raises on purpose."""


class ControlNetFileError(ControlNetError):
    """The file cannot be read: missing, truncated, corrupt, or unsafe to unpickle."""


class ControlNetFormatError(ControlNetError):
    """The file reads fine but is not a ControlNet layout we can use."""


class FamilyMismatchError(ControlNetError):
    """A ControlNet for one base family (SD1.x / SD2.x / SDXL) used with another."""
