"""The support matrix: which feature is tested on which model family.

A family-feature test carries ``cell(family, feature)`` (a ``pytest.mark.matrix``), e.g.
``pytest.param("gemma2", marks=cell("gemma2", "generate"))``; the README's support matrix is
generated from these marks and the outcomes CI records (see below), never written by hand.
"""
import pytest


def cell(family, feature):
    return pytest.mark.matrix(family=family, feature=feature)
