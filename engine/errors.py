"""Typed errors. Every message says what was wrong and what to do about it."""


class EngineError(Exception):
    """Base class: the UI shows these messages to the user as they are."""


class ConfigError(EngineError):
    """A config file or value is malformed or inconsistent."""


class SchemeError(EngineError):
    """An unknown or unsupported quantization scheme name."""


class FormatError(EngineError):
    """A tensor a number format cannot represent (shape, NaN/Inf, dtype)."""


class KernelError(EngineError):
    """No kernel can run a format on a device; the message lists why each one declined."""


class CheckpointError(EngineError):
    """A checkpoint file is missing, corrupt, ambiguous or does not match the model."""


class HardwareError(EngineError):
    """The GPU cannot run what was asked for."""


class HubError(EngineError):
    """A download from the Hugging Face Hub failed."""


class ParallelError(EngineError):
    """A multi-process run failed: a collective timed out or another rank stopped."""
