"""Guest images: built from Debian packages, cached by a hash of their recipe."""

from .recipe import Recipe, default_recipe
from .builder import Image, build, find, list_images, remove

__all__ = ["Image", "Recipe", "build", "default_recipe", "find", "list_images", "remove"]
