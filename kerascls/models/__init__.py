"""Model families. Each module registers its variants with :mod:`kerascls.registry`."""
