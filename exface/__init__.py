"""exface: identity and attributes in the latent space of pretrained face GANs."""

from exface.registry import create_part, get_part, get_registry, list_parts, load_plugins

__version__ = "0.1.0"

__all__ = ["create_part", "get_part", "list_parts", "load_plugins", "get_registry", "__version__"]
