"""Which referrers hang from a missing manifest, deepest first."""

from __future__ import annotations

from proxy.oci.orphans import emptied, hanging_from, subjects_to_check

TREE = {
    "sbom": "image",
    "sig-of-sbom": "sbom",
    "cert-of-sig": "sig-of-sbom",
    "sig": "image",
    "other-sig": "other-image",
}


def test_only_subjects_that_are_no_referrers_are_checked() -> None:
    assert subjects_to_check(TREE) == {"image", "other-image"}


def test_the_whole_tree_under_an_absent_subject_goes_deepest_first() -> None:
    assert hanging_from(TREE, {"image"}) == ["cert-of-sig", "sig-of-sbom", "sbom", "sig"]


def test_nothing_hangs_from_present_subjects() -> None:
    assert hanging_from(TREE, set()) == []
    assert hanging_from(TREE, {"other-image"}) == ["other-sig"]


def test_a_subtree_root_may_be_the_absent_one() -> None:
    """Cascade delete asks for the tree under a referrer too."""
    assert hanging_from(TREE, {"sbom"}) == []  # a referrer found is present by definition
    below = {k: v for k, v in TREE.items() if k != "sbom"}
    assert hanging_from(below, {"sbom"}) == ["cert-of-sig", "sig-of-sbom"]


def test_loops_are_not_followed() -> None:
    assert hanging_from({"a": "b", "b": "a", "c": "gone"}, {"gone"}) == ["c"]


def test_subjects_left_without_referrers_after_a_cascade() -> None:
    tree = {k: v for k, v in TREE.items() if k != "other-sig"}
    everything = set(tree)
    assert emptied(tree, "image", everything) == {"image", "sbom", "sig-of-sbom"}
    # The signature of the SBOM was refused: the SBOM still has a referrer, the image does not
    # (its SBOM went), the signature lost its certificate.
    refused = everything - {"sig-of-sbom"}
    assert emptied(tree, "image", refused) == {"image", "sig-of-sbom"}
    assert emptied({}, "image", set()) == {"image"}
