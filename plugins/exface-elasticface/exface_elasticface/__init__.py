"""ElasticFace losses for exface (registered through the ``exface.plugins`` entry point)."""
