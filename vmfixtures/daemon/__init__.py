"""The fixture daemon: leases of real VMs, a warm pool, and crash-safe reaping."""
