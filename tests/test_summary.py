"""irblocks.summary: the per-stage table accounts for every parameter and MAC exactly once."""
import pytest

from irblocks.summary import by_kind, format_summary, summarize


@pytest.mark.parametrize("name", ["restormer-tiny", "clearair-tiny", "anyir-tiny"])
def test_rows_and_block_types_sum_to_the_totals(name):
    s = summarize(name, size=(40, 56))
    top = [r for r in s.rows if r.depth == 0]
    assert sum(r.flops for r in top) == s.flops and sum(r.params for r in top) == s.params
    kinds = by_kind(s)
    assert sum(k[4] for k in kinds) == s.flops and sum(k[2] for k in kinds) == s.params
    for i, r in enumerate(s.rows):                  # a stage's inner rows sum to the stage
        if r.depth == 0 and i + 1 < len(s.rows) and s.rows[i + 1].depth == 1:
            inner = []
            for q in s.rows[i + 1:]:
                if q.depth == 0:
                    break
                inner.append(q)
            assert sum(q.flops for q in inner) == r.flops
            assert sum(q.params for q in inner) == r.params
    text = format_summary(s)
    assert "by block type" in text and text.count("\n") > len(top)


def test_shared_modules_are_counted_once():
    s = summarize("clearair-tiny", size=(40, 56))
    shared = [r for r in s.rows if r.path.startswith("shared.")]
    assert shared and all(r.flops == 0 and "runs inside" in r.note for r in shared)
    assert any(r.params for r in shared)
