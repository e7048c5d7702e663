import urllib.request

from pipelines.metrics import Metrics


def test_metrics_are_served_with_conventions() -> None:
    m = Metrics()
    m.frames_read.labels(camera="gate").inc(3)
    m.set_camera_status("gate", "reconnecting")
    m.stage_latency.labels(camera="gate", stage="detect").observe(0.04)
    m.on_delivery(True, 5)
    m.on_delivery(False, 2)
    port = m.serve("127.0.0.1", 0)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'posewatch_frames_read_total{camera="gate"} 3.0' in body
    assert 'posewatch_camera_status{camera="gate",status="reconnecting"} 1.0' in body
    assert 'posewatch_camera_up{camera="gate"} 0.0' in body
    assert (
        "posewatch_alerts_published_total 5.0" in body
        and "posewatch_publish_errors_total 2.0" in body
    )
    assert (
        'posewatch_stage_latency_seconds_bucket{camera="gate",le="0.05",stage="detect"} 1.0' in body
    )
    assert 'posewatch_build_info{version="0.1.0"} 1.0' in body
    names = {
        line.split("{")[0].split(" ")[0]
        for line in body.splitlines()
        if line and not line.startswith("#")
    }
    assert all(n.startswith("posewatch_") for n in names)
    # Every counter's samples are exposed as <name>_total (plus prometheus-client's _created).
    checked = 0
    for fam in m.registry.collect():
        if fam.type == "counter" and fam.samples:
            assert all(x.name.endswith(("_total", "_created")) for x in fam.samples), fam.name
            checked += 1
    assert checked >= 3
