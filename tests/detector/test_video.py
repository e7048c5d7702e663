"""Real video, real weights: detection coverage, tracking quality, anatomy (slow)."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.extract import track_video
from detector.pose import PoseFrame, tracks_from_frames
from detector.pose_model import PoseModel


@pytest.fixture(scope="module")
def model() -> PoseModel:
    return PoseModel()  # the defaults a user gets


@pytest.fixture(scope="module")
def vtest_frames(videos: Path, model: PoseModel) -> list[PoseFrame]:
    return list(track_video(model, videos / "vtest.avi", "vtest"))


def likely_id_switches(frames: list[PoseFrame], width: int, last: int) -> int:
    """Tracks that end away from the image border and resume under a new id nearby soon after."""
    tracks = tracks_from_frames(frames)
    ends = []
    for t in tracks.values():
        idx = np.flatnonzero(t.present)
        first = np.nanmean(t.keypoints[idx[0], :, :2], axis=0)
        last_xy = np.nanmean(t.keypoints[idx[-1], :, :2], axis=0)
        ends.append((t.track_id, int(t.frames[idx[0]]), int(t.frames[idx[-1]]), first, last_xy))
    n = 0
    for a in ends:
        if a[4][0] < 40 or a[4][0] > width - 40 or a[2] >= last - 5:
            continue
        if any(
            b[0] != a[0] and 0 < b[1] - a[2] <= 60 and np.linalg.norm(b[3] - a[4]) < 60
            for b in ends
        ):
            n += 1
    return n


@pytest.mark.slow
def test_vtest_coverage_against_1280_tracks_and_anatomy(
    videos: Path, model: PoseModel, vtest_frames: list[PoseFrame]
) -> None:
    from ultralytics import YOLO

    assert len(vtest_frames) == 795
    # Persons per frame against the same weights at image size 1280 (every 5th frame).
    bare = YOLO(str(model.weights), task="pose")
    cap = cv2.VideoCapture(str(videos / "vtest.avi"))
    ref_counts, ours = [], []
    i = 0
    while True:
        ok, img = cap.read()
        if not ok:
            break
        if i % 5 == 0:
            r = bare.predict(img, imgsz=1280, verbose=False, classes=[0])[0]
            ref_counts.append(len(r.boxes))
            ours.append(len(vtest_frames[i].persons))
        i += 1
    ratio = np.mean(ours) / np.mean(ref_counts)
    print(
        f"persons/frame: ours {np.mean(ours):.2f}, 1280 {np.mean(ref_counts):.2f}, ratio {ratio:.3f}"
    )
    assert ratio >= 0.85

    tracks = tracks_from_frames(vtest_frames)
    long_tracks = [t for t in tracks.values() if t.num_present > 200]
    switches = likely_id_switches(vtest_frames, 768, 795)
    print(
        f"tracks {len(tracks)}, longer than 200 frames {len(long_tracks)}, likely id switches {switches}"
    )
    assert len(long_tracks) >= 3
    assert switches <= 12

    # Upright walkers (box at least 1.8x taller than wide): ankles below hips.
    ok = total = 0
    for f in vtest_frames:
        for p in f.persons:
            w, h = p.bbox[2] - p.bbox[0], p.bbox[3] - p.bbox[1]
            hips, ankles = p.keypoints[[11, 12], 1], p.keypoints[[15, 16], 1]
            if h < 1.8 * w or np.isnan(hips).all() or np.isnan(ankles).all():
                continue
            total += 1
            ok += int(np.nanmean(ankles) > np.nanmean(hips))
    print(f"ankles below hips in {ok}/{total} upright person-frames")
    assert total > 1000 and ok / total >= 0.95


@pytest.mark.slow
def test_pushing_clip_has_two_people(videos: Path, model: PoseModel) -> None:
    frames = list(track_video(model, videos / "demo_skeleton.mp4", "push"))
    assert len(frames) == 72
    counts = [len(f.persons) for f in frames]
    tracks = tracks_from_frames(frames)
    assert np.median(counts) == 2
    assert sum(1 for t in tracks.values() if t.num_present >= 36) == 2


@pytest.mark.slow
def test_a_fresh_cache_gets_one_whole_export_when_two_processes_start_at_once(
    tmp_path: Path,
) -> None:
    """Two services starting on a machine that never exported (a shared cache): each builds
    the OpenVINO model at once; both load a whole export and nothing half-written is left."""
    import os
    import subprocess
    import sys

    code = (
        "import numpy as np; from detector.pose_model import PoseModel; "
        "m = PoseModel(backend='openvino', device='cpu'); "
        "d = m.predict([np.zeros((480, 640, 3), np.uint8)])[0]; print(m.path, len(d.scores))"
    )
    env = {**os.environ, "POSEWATCH_CACHE": str(tmp_path), "YOLO_OFFLINE": "1"}
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-c", code]
    pipe = subprocess.PIPE
    procs = [
        subprocess.Popen(cmd, cwd=root, env=env, text=True, stdout=pipe, stderr=pipe)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    last = [out.splitlines()[-1].split() for out, _ in outs]  # Ultralytics prints too
    assert len({p for p, _ in last}) == 1 and all(n == "0" for _, n in last)  # nobody there
    (key,) = list((tmp_path / "exports").iterdir())
    assert [p.name for p in key.iterdir()] == ["yolo11n-pose_openvino_model"]
    assert (key / "yolo11n-pose_openvino_model" / "yolo11n-pose.xml").is_file()
