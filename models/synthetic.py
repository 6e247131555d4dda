"""PLACEHOLDER being written (issue 2): the built-in demo dataset."""


def make_synthetic_dataset(out_dir, seed=0):
    raise NotImplementedError
