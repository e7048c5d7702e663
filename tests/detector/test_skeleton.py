from detector.skeleton import (
    BODY_PARTS,
    FLIP_INDEX,
    FLIP_PAIRS,
    KEYPOINT_INDEX,
    KEYPOINT_NAMES,
    LIMBS,
    NUM_KEYPOINTS,
)


def test_names_and_counts() -> None:
    assert NUM_KEYPOINTS == 17
    assert len(set(KEYPOINT_NAMES)) == 17
    assert KEYPOINT_INDEX["left_ankle"] == 15
    assert len(LIMBS) == 19


def test_flip_is_an_involution_that_swaps_left_and_right() -> None:
    assert [FLIP_INDEX[FLIP_INDEX[i]] for i in range(17)] == list(range(17))
    for a, b in FLIP_PAIRS:
        na, nb = KEYPOINT_NAMES[a], KEYPOINT_NAMES[b]
        assert na.replace("left", "right") == nb
    assert FLIP_INDEX[0] == 0


def test_limbs_and_parts_index_valid_keypoints() -> None:
    for a, b in LIMBS:
        assert 0 <= a < 17 and 0 <= b < 17 and a != b
    covered = {i for part in BODY_PARTS.values() for i in part}
    assert covered == set(range(17))
