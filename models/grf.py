"""PLACEHOLDER being written (issue 3): the Gaussian-random-field prior."""
