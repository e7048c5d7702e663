# posewatch — two commands: `make demo` (set up and run the main job) and `make test`.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv lint clean debs

# Idempotent: the venv is (re)built when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,accel]'
	@touch $(STAMP)

venv: $(STAMP)

# The main command: the service end to end on OpenCV's sample pedestrian video (Debian's
# opencv-doc package; installed here when missing), cold start (learn the scene, then
# score), embedded Kafka broker, metrics on :9108. VIDEO=path-or-URL runs your own footage.
DEMO_VIDEO := /usr/share/doc/opencv-doc/examples/data/vtest.avi
VIDEO ?= $(DEMO_VIDEO)
DEMO_FRAMES ?= 1500

demo: $(STAMP)
	@if [ "$(VIDEO)" = "$(DEMO_VIDEO)" ] && [ ! -f "$(DEMO_VIDEO)" ]; then \
		echo "installing Debian's opencv-doc for the sample video $(DEMO_VIDEO)"; \
		if [ "$$(id -u)" = 0 ]; then apt-get install -y -q opencv-doc >/dev/null; \
		else sudo apt-get install -y -q opencv-doc >/dev/null; fi; \
	fi
	YOLO_OFFLINE=1 POSEWATCH_CAMERAS__LAWN__SOURCE="$(VIDEO)" \
		$(BIN)/posewatch run --config config/demo.yaml --max-frames $(DEMO_FRAMES)

# Debian packages the real-component tests need (installed once when missing; CI runs as
# root, elsewhere through sudo). One package per word; add to this list, not elsewhere.
DEB_TEST_PACKAGES ?= python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav chromium chromium-driver prometheus stunnel4
DEB_STAMP := $(VENV)/.debs

$(DEB_STAMP): Makefile
	@missing=""; for p in $(DEB_TEST_PACKAGES); do \
		dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages for the tests:$$missing"; \
		if [ "$$(id -u)" = 0 ]; then apt-get update -q >/dev/null && apt-get install -y -q $$missing >/dev/null; \
		else sudo apt-get update -q >/dev/null && sudo apt-get install -y -q $$missing >/dev/null; fi; \
	fi
	@mkdir -p $(VENV) && touch $(DEB_STAMP)

debs: $(DEB_STAMP)

lint: $(STAMP)
	$(BIN)/ruff check detector forecasting pipelines tests bench
	$(BIN)/ruff format --check detector forecasting pipelines tests bench
	$(BIN)/mypy

test: lint debs
	YOLO_OFFLINE=1 $(BIN)/python -m pytest

clean:
	rm -rf $(VENV)
