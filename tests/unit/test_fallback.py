from proxy.fallback import apply_changes
from proxy.manifest import Referrer


def referrer(n: int) -> Referrer:
    return Referrer("sha256:" + "a" * 64, f"sha256:{n:064x}", None, b"{}")


def test_changes_apply_in_order_without_duplicates() -> None:
    one, two, three = referrer(1), referrer(2), referrer(3)
    assert apply_changes([one], [two, one, three]) == [one, two, three]
    assert apply_changes([one, two], [one.digest]) == [two]
    assert apply_changes([one], [two, two.digest]) == [one]
    assert apply_changes([one], [one.digest, one]) == [one]
    assert apply_changes([], ["sha256:" + "0" * 64]) == []
