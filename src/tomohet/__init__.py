"""tomohet: structural heterogeneity of macromolecules in situ by cryo-electron tomography.

Layers (lower never import higher): ``data``, ``physics`` -> ``simulate`` -> ``methods`` ->
``analysis`` -> ``benchmark`` -> ``cli``/``parallel``. See the README and DESIGN.md.
"""

__version__ = "0.1.0"
