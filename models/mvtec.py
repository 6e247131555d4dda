"""PLACEHOLDER being written (issue 2): the MVTec-layout dataset."""


class MVTecAD:
    pass


def list_categories(root):
    raise NotImplementedError
