import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from detector.datasets import DatasetError, load_split, splits, summarize
from detector.pose import Track
from detector.posefiles import PoseFileError, write_stgnf
from pipelines.tracks import load_tracks
from tests.realworld import clip_piece, write_dataset


def test_real_aihub2_summary_matches_published_counts(aihub2: Path) -> None:
    train = summarize("train", load_split(aihub2, "train"))
    test = summarize("test", load_split(aihub2, "test"))
    assert (train.clips, train.tracks, train.person_frames, train.label_frames) == (
        11,
        36,
        37_336,
        39_580,
    )
    assert train.anomalous_fraction == pytest.approx(0.436, abs=5e-4)
    assert (test.clips, test.tracks, test.person_frames, test.label_frames) == (
        10,
        27,
        36_428,
        35_992,
    )
    assert test.anomalous_fraction == pytest.approx(0.448, abs=5e-4)


def test_real_aihub2_tracks_are_sane(aihub2: Path) -> None:
    clips = load_split(aihub2, "test")
    assert splits(aihub2) == ["train", "test"]
    main = max((t for c in clips for t in c.tracks.values()), key=len)
    assert len(main) > 3000
    vis = main.visible[main.present]
    assert vis.mean() > 0.9
    xy = main.keypoints[main.present][..., :2]
    assert np.nanmax(xy[..., 0]) <= 1920 and np.nanmax(xy[..., 1]) <= 1080
    for c in clips:
        assert c.labels is not None and c.frame_labels().shape[0] == c.num_frames


def _make_dataset(root: Path, layout: str) -> None:
    kp = np.ones((17, 3), np.float32) * 5
    tr = {1: Track.from_rows(1, {i: (kp, 1.0) for i in range(10)})}
    for split in ("train", "test"):
        write_stgnf(root / "pose" / split / f"{split}_01_alphapose_tracked_person.json", tr)
    if layout == "aihub":
        (root / "gt").mkdir()
        for split in ("train", "test"):
            np.save(root / "gt" / f"{split}_01.npy", np.r_[np.zeros(6), np.ones(6)])
    else:
        (root / "gt" / "test_frame_mask").mkdir(parents=True)
        np.save(root / "gt" / "test_frame_mask" / "test_01.npy", np.r_[np.zeros(6), np.ones(6)])


def test_stgnf_layout_train_unlabelled(tmp_path: Path) -> None:
    _make_dataset(tmp_path, "stgnf")
    train = load_split(tmp_path, "train")
    assert train[0].labels is None and train[0].frame_labels().sum() == 0
    test = load_split(tmp_path, "test")
    assert test[0].labels is not None and int(test[0].labels.sum()) == 6
    assert test[0].num_frames == 12


def test_dataset_errors(tmp_path: Path) -> None:
    _make_dataset(tmp_path, "aihub")
    with pytest.raises(
        DatasetError, match=r"no such split folder.*splits here: \['test', 'train'\]"
    ):
        load_split(tmp_path, "val")
    (tmp_path / "gt" / "test_01.npy").unlink()
    with pytest.raises(DatasetError, match="no label file for clip 'test_01'"):
        load_split(tmp_path, "test")
    np.save(tmp_path / "gt" / "test_01.npy", np.array([0, 2, 1]))
    with pytest.raises(DatasetError, match="labels must be 0 or 1"):
        load_split(tmp_path, "test")
    (tmp_path / "gt" / "test_01.npy").write_bytes(b"\x93NUMPY")
    with pytest.raises(DatasetError, match="cannot read labels"):
        load_split(tmp_path, "test")
    bad = tmp_path / "pose" / "train" / "train_01_alphapose_tracked_person.json"
    bad.write_text(bad.read_text()[:100])
    with pytest.raises(
        PoseFileError, match=r"train_01_alphapose_tracked_person\.json.*invalid JSON"
    ):
        load_split(tmp_path, "train")
    empty = tmp_path / "empty"
    (empty / "pose" / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no pose files"):
        load_split(empty, "train")


# -- issue 19 item 3: labels shorter than the poses are an error, never padded -----------------


@pytest.mark.parametrize("n_labels", [300, 599])
def test_labels_shorter_than_the_poses_name_the_clip_and_both_lengths(
    aihub2: Path, tmp_path: Path, n_labels: int
) -> None:
    name, tracks, labels = clip_piece(aihub2, "test", 0, 1600, 2200)
    root = write_dataset(tmp_path, "test", {name: (tracks, labels[:n_labels])})
    (clip,) = load_split(root, "test")
    assert clip.posed_frames == 600 and clip.labels is not None
    with pytest.raises(DatasetError) as info:
        clip.frame_labels()
    assert str(info.value) == (
        f"clip {name!r}: its labels ({root}/gt/{name}.npy) cover {n_labels:,} frames (0 to "
        f"{n_labels - 1:,}) but its poses ({clip.path}) cover 600 (0 to 599); labels must "
        "cover every posed frame (longer labels are fine). Fix the label file, or score only "
        "the labelled frames (`posewatch evaluate --labelled-only`)"
    )
    with pytest.raises(DatasetError, match=f"cover {n_labels:,} frames"):
        load_tracks(root, "test")  # training reads the labels too
    cut = clip.labelled_only()
    assert cut.num_frames == n_labels and cut.posed_frames <= n_labels
    assert len(cut.frame_labels()) == n_labels
    for tid, tr in cut.tracks.items():  # the same poses, up to the last labelled frame
        n = len(tr)
        np.testing.assert_array_equal(tr.keypoints, clip.tracks[tid].keypoints[:n])
        assert tr.present[-1] and int(tr.frames[-1]) < n_labels


def test_longer_labels_stay_allowed(aihub2: Path, tmp_path: Path) -> None:
    name, tracks, labels = clip_piece(aihub2, "test", 0, 1600, 2200)
    longer = np.r_[labels, np.ones(100, labels.dtype)]
    (clip,) = load_split(write_dataset(tmp_path, "test", {name: (tracks, longer)}), "test")
    assert clip.num_frames == 700
    np.testing.assert_array_equal(clip.frame_labels(), longer)


def test_a_label_file_whose_header_announces_more_than_it_holds(tmp_path: Path) -> None:
    _make_dataset(tmp_path, "aihub")
    path = tmp_path / "gt" / "test_01.npy"
    raw = path.read_bytes().replace(b"(12,)", b"(100000000000000,)")  # 10**14 labels
    path.write_bytes(raw)
    tracemalloc.start()
    with pytest.raises(
        DatasetError,
        match=r"test_01\.npy: cannot read labels \(its header announces 100,000,000,000,000 labels, more than a clip may have frames \(10,000,000\)\)",
    ):
        load_split(tmp_path, "test")
    assert tracemalloc.get_traced_memory()[1] < 20 * 2**20
    tracemalloc.stop()
    with open(path, "wb") as fh:  # a header for 5,000 float64 labels, then 12 of them
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "<f8", "fortran_order": False, "shape": (5000,)}
        )
        fh.write(np.zeros(12).tobytes())
    with pytest.raises(
        DatasetError, match=r"announces 5,000 values of 8 bytes but the file holds 96 bytes of data"
    ):
        load_split(tmp_path, "test")
