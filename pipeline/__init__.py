"""Everything that uses the models: training and checkpoints, evaluation and metrics, one
job (train -> evaluate -> record), the grid and its results CSV, figures, the notebook's
helpers, the demo dataset and the command line (``python -m pipeline``).

Imports go one way: ``pipeline`` imports ``models``, never the other way round. The
modules are imported by name (``from pipeline import grid``); importing the package itself
loads nothing else. Map of the modules: docs/design.md, "The two packages".
"""
