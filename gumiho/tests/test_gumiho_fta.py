import torch
from gumiho.gumiho import fta_pad, official_mask_edit

# Level-ordered tree: 0 root; depth 1: 1(0) 2(0); depth 2: 3(1) 4(1) 5(1); depth 3: 6(3) 7(3) 8(4).
PARENTS = [-1, 0, 0, 1, 1, 1, 3, 3, 4]
RETRIEVE = torch.tensor([[0, 2, -1, -1], [0, 1, 5, -1], [0, 1, 3, 6], [0, 1, 3, 7], [0, 1, 4, 8]])


def ancestor_mask() -> torch.Tensor:
    n = len(PARENTS)
    mask = torch.eye(n, dtype=torch.bool)
    for node in range(1, n):
        mask[node] |= mask[PARENTS[node]]
    return mask


def test_fta_pads_each_column_with_its_mode_ties_to_smaller_id():
    padded = fta_pad(RETRIEVE)
    # column 2: real {5, 3, 3, 4} -> 3; column 3: real {6, 7, 8} all once -> 6 (the smaller id)
    expected = [[0, 2, 3, 6], [0, 1, 5, 6], [0, 1, 3, 6], [0, 1, 3, 7], [0, 1, 4, 8]]
    assert padded.tolist() == expected
    assert RETRIEVE[0, 2] == -1  # the input is left alone


def test_padded_rows_need_not_be_tree_paths():
    padded = fta_pad(RETRIEVE)
    # row 0 becomes root -> 2 -> 3 -> 6, but node 3's parent is 1: verified with another branch's logits
    assert PARENTS[padded[0, 2]] != padded[0, 1]


def test_official_mask_edit_is_a_no_op_under_the_causal_mask():
    tree = ancestor_mask()
    edited = official_mask_edit(tree, RETRIEVE)
    assert not torch.equal(edited, tree)  # the edit does write entries ...
    causal = torch.ones_like(tree).tril()
    assert torch.equal(edited & causal, tree & causal)  # ... that the causal mask hides: effective mask unchanged


def test_full_rows_are_untouched():
    full = torch.tensor([[0, 1, 3], [0, 2, 4]])
    assert torch.equal(fta_pad(full), full)
