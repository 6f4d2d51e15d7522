"""vmfixtures: an executable specification of VM sandboxes, run against real VMs."""

__version__ = "0.1.0"
