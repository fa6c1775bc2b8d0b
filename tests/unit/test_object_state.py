"""ObjectState: the frozen value the re-wrap stages hand on (migrate/state.py)."""
from __future__ import annotations

import dataclasses

import pytest

from keymigration.migrate.state import ObjectState


def test_a_stage_adds_its_findings_to_a_new_state_and_the_old_one_is_unchanged():
    start = ObjectState.start("data/k", None, "data/k.instruction")
    found = start.add(fingerprint="f" * 32, step=2)
    assert (found.key, found.target_name, found.fingerprint, found.step) == ("data/k", "data/k.instruction", "f" * 32, 2)
    assert (start.fingerprint, start.step) == ("", 1)
    assert found == dataclasses.replace(start, fingerprint="f" * 32, step=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        found.step = 3  # type: ignore[misc]


def test_a_finding_that_is_not_a_field_is_refused():
    with pytest.raises(TypeError, match="no field 'etag'"):
        ObjectState.start("k", None, "k.instruction").add(etag='"abc"')
