"""One exception family, so the CLI can print one line and pick an exit code."""


class VmfError(Exception):
    """A failure the user can act on. ``exit_code`` is what the CLI returns."""

    exit_code = 1


class ConfigError(VmfError):
    """A config file is missing, unreadable or has a bad field."""

    exit_code = 2


class NotFound(VmfError):
    """A VM, image or lease that does not exist."""

    exit_code = 3


class Mismatch(VmfError):
    """An existing VM differs from the spec asked for; nothing was changed."""

    exit_code = 4


class MissingDependency(VmfError):
    """A host tool (qemu, mmdebstrap, ...) is absent."""

    exit_code = 5


class PermissionDenied(VmfError):
    """The operation needs privileges the caller does not have."""

    exit_code = 6


class Timeout(VmfError):
    """A wait for a guest or QEMU event ran past its deadline."""

    exit_code = 7


class GuestError(VmfError):
    """The guest or QEMU refused or failed a request."""

    exit_code = 8


class NoSpace(VmfError):
    """The destination has no room left; what was half-written is removed, nothing else changed."""

    exit_code = 12


class Unsupported(VmfError):
    """The VM's backend (or the product) cannot do what was asked; nothing was changed."""

    exit_code = 10


class InUse(VmfError):
    """The object is in use (a disk attached to a VM); nothing was changed."""

    exit_code = 11
