"""Systems under test: product adapters (``base.Product``) and the independent checker (``host.Host``).

``open_product`` makes the adapter a run asked for (``-D product=...``).
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import Outcome, Product
from .host import Host

__all__ = ["Host", "Outcome", "Product", "PRODUCTS", "open_product"]

PRODUCTS = ("vmfixtures", "agsekit", "virtnbdbackup")


def open_product(name: str, project, options: dict | None = None) -> Product:
    """The adapter for product ``name`` acting on ``project`` (a scenario's project folder)."""
    options = options or {}
    if name == "vmfixtures":
        from .reference import Vmfixtures

        product = Vmfixtures(project)
    elif name == "agsekit":
        from .agsekit import Agsekit

        product = Agsekit(project, options.get("agsekit"))
    elif name == "virtnbdbackup":
        from .virtnbdbackup import Virtnbdbackup

        product = Virtnbdbackup(project)
    else:
        raise ConfigError(f"-D product: unknown product {name!r} (known: {', '.join(PRODUCTS)})")
    project.render = product.render_config
    project.config_name = getattr(product, "config_name", project.config_name)
    return product
