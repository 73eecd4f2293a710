"""Helpers shared by the tests (models, op cases, reference builders, repository paths).

``tests/conftest.py`` puts this folder on ``sys.path``: import a helper by its bare module
name (``from ptq_helpers import mlp``), never as ``_support.ptq_helpers`` (that would load a
second copy of the module).
"""
