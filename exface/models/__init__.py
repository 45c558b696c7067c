"""Plain ``nn.Module`` networks and their weight-file readers (no registry, no Lightning)."""
