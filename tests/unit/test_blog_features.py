"""A page config's unknown feature is named in the refusal, but a name of thousands of characters
is not echoed whole (probe editor: a 10,000-character feature came back in full, twice)."""

from __future__ import annotations

import pytest

from apps.blog.service import check_features
from apps.common.problems import InvalidInput


def test_an_unknown_feature_is_named() -> None:
    with pytest.raises(InvalidInput) as refused:
        check_features({"calender": True})
    assert "There is no feature called 'calender'" in refused.value.detail
    assert refused.value.field == "features.calender"


def test_a_very_long_unknown_feature_is_named_by_its_start_only() -> None:
    with pytest.raises(InvalidInput) as refused:
        check_features({"f" * 10_000: True})
    assert "There is no feature called 'ffffffffffffffffffffffffffffffffffffffff...'" in (
        refused.value.detail
    )
    assert len(refused.value.detail) < 300
    assert refused.value.field is not None
    assert len(refused.value.field) < 60
