"""tests.conftest.requires: an optional layer missing skips a test, except in CI, where it fails."""

from __future__ import annotations

import json

import pytest

from tests import conftest
from tests.conftest import requires


def test_missing_module_skips_outside_ci_and_fails_in_ci(monkeypatch):
  monkeypatch.setitem(conftest.LAYER_OF, "no_such_module_xyz", "bench")
  monkeypatch.delenv("CI", raising=False)
  with pytest.raises(pytest.skip.Exception, match=r"bench layer.*requirements/bench\.txt"):
    requires("no_such_module_xyz")
  monkeypatch.setenv("CI", "true")
  with pytest.raises(pytest.fail.Exception, match="no_such_module_xyz"):
    requires("no_such_module_xyz")


def test_present_module_is_imported_in_and_out_of_ci(monkeypatch):
  monkeypatch.setenv("CI", "true")
  assert requires("json") is json
  monkeypatch.delenv("CI")
  assert requires("json") is json
