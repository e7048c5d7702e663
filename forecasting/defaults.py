"""Defaults shared by training, scoring, the CLI and the service config (no torch import).

- ``DEFAULT_MEMBERS``: the default model is an ensemble of 7 GRU-NFs. On AIHub2 test (nine
  single models, every subset scored offline) the seed spread of the frame AUC-ROC shrinks
  with the ensemble size: 1 member 86.9 ± 3.6, 3 members 89.3 ± 1.2, 5 members 89.7 ± 0.7,
  7 members 90.1 ± 0.4 (docs/DECISIONS.md, session 5).
- ``DEFAULT_SAMPLES``: K = 42 futures per window, 6 from each of the 7 members. Best-of-K
  scorers keep improving with K (7 members with 3 / 4 / 5 / 6 futures each: 89.7 / 89.9 /
  90.0 / 90.1); 6 each costs about twice the K = 20 of a single model.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

DEFAULT_MEMBERS = 7
DEFAULT_SAMPLES = 42

#: The default scorer (``auto``): ``fused``, motion (``minhde``) + posture flows + the
#: stillness term (:mod:`forecasting.stillness`). Posture sees what motion cannot (a body
#: lying, crouching); the stillness term sees the freeze a still posture hides (docs/
#: DECISIONS.md, session 11). It needs the checkpoint's posture flows fitted with the
#: stillness term (``posewatch train`` adds them); a checkpoint without them is scored
#: with :data:`FALLBACK_SCORER`.
DEFAULT_SCORER: Final = "fused"
#: The scorer name that means "the default for this checkpoint" (:data:`DEFAULT_SCORER` or
#: :data:`FALLBACK_SCORER`; ``forecasting.scoring.resolve_scorer``).
AUTO: Final = "auto"
#: ``auto``'s scorer for a checkpoint without posture flows (or with flows fitted before the
#: stillness term existed, whose fused score cannot see a freeze).
FALLBACK_SCORER: Final = "minhde"

#: Every scorer (:mod:`forecasting.scoring`); the config, the CLI and the registry derive
#: their lists from this one.
ScorerName = Literal["minhde", "minfde", "minade", "kde", "nll", "posture", "fused"]
SCORERS: tuple[ScorerName, ...] = get_args(ScorerName)

#: The sampler ``calibrate``, cold start and the service use unless told otherwise: the
#: checkpoint's own (``default``: GRU-SNF at :data:`SAMPLER_TEMPERATURE` for a model trained
#: now, the GRU-SNF default at 1 for one saved before session 14), so a
#: threshold is served with the sampler it was calibrated with.
DEFAULT_SAMPLER: Final = "default"

#: Temperature of the sampler a newly trained checkpoint carries (its ``default``: the GRU-SNF
#: default with the flow's base noise scaled by 0.8, ``gru-snf-t0.8``). Chosen without test
#: labels: on the validation clips' normal windows the true coordinate falls outside the
#: range of the K = 42 futures 4.5% of the time at 0.8, against 2/(K+1) = 4.7% for a
#: calibrated set (2.8% at 1: too wide; docs/DECISIONS.md, session 9). Measured after the
#: choice (session 14, 3 seeds, stride 2): ``fused`` on AIHub2 test +0.23 (94.78 vs 94.55),
#: ``minhde`` +0.81, every injected kind within 0.01. Checkpoints saved before keep theirs.
SAMPLER_TEMPERATURE: Final = 0.8

#: Posture flows of the fused scorer (:mod:`forecasting.posture`): flows averaged (what
#: ``train`` adds by default), epochs per flow, weight of the posture score. 20 epochs, not
#: 10: at 10 every flow kept its last epoch (not converged); at 20 the held-out NLL of the
#: validation clips' normal windows drops from 1.66 to 1.37 bits/dim (seed 0) and ``fused``
#: holds up better under a changed view (docs/DECISIONS.md, sessions 22-23).
POSTURE_FLOWS = 8
POSTURE_EPOCHS = 20
#: Epochs per posture flow in cold start (``pipelines.learning.LearnSettings``): its flows
#: share the camera's training time limit, so they keep the 10 its measurements were of.
COLD_START_POSTURE_EPOCHS = 10
#: Cold start's fused score measures the motion part against all of its held-out windows,
#: not against people who moved alike (``PostureConfig.speed_conditioned`` off): a
#: forecaster of a few minutes' footage is a weak motion detector (``minhde`` 48 AIHub2
#: test AUC at 3 minutes, 82.7 at 10), and the speed-conditioned spread, 1.6-2.5x narrower,
#: lets it outweigh the posture flows: at 3 / 10 minutes 44.6 / 90.0 conditioned against
#: 71.0 / 93.7 pooled (3 seeds each, the same learned models; docs/DECISIONS.md,
#: session 28).
COLD_START_SPEED_CONDITIONED = False
POSTURE_WEIGHT = 1.0
#: Degrees by which the posture flows turn each window's body axis upright at most
#: (``PostureConfig.upright``): a camera's roll or perspective lean undone, a body lying down
#: still lying (docs/DECISIONS.md, session 12).
POSTURE_UPRIGHT = 30.0

#: Frames (the first of those the posture flows see) over which the body axis that
#: ``POSTURE_UPRIGHT`` turns upright is measured (``PostureConfig.upright_frames``; 0: all).
#: 12 (a default window's observed part, so a body tipping over in the future is not turned
#: back) measured the same as 0 on AIHub2 test, seed 0 (94.47 vs 94.51; under a 15-degree
#: roll 93.21 vs 93.23): 0 stays, the three-seed table is of it (docs/DECISIONS.md,
#: session 13).
POSTURE_UPRIGHT_FRAMES = 0

#: Degrees of the posture flows' training augmentation (``PostureConfig.yaw``): each
#: training window's horizontal coordinates scaled by ``cos(theta)``, ``theta`` uniform in
#: ``[0, 60]``, every epoch: a body turned side-on to the camera, which AIHub2's one
#: training scenario rarely shows (the highest normal scores of its test scenario are people
#: turning side-on). Seed 0 (docs/DECISIONS.md, session 20): `posture` under a horizontal
#: squash of 0.7 -0.09 AUC (-1.05 without), `fused` on AIHub2 test 95.25 (95.14 without),
#: the injected kinds within 0.015.
POSTURE_YAW = 60.0

#: Early stop (``forecaster.early_stop_margin: auto``; ``forecasting.scoring.early_stop_bound``):
#: live scoring stops drawing futures for a window whose score from the futures drawn so far
#: (the first member's, then three members') is this far below the alert threshold, in the
#: served scorer's own units. The best-of-K errors: 1.5 (log error; issue 21, three seeds:
#: AUC -0.10 / -0.13, no alert episode differs). ``fused``: 3.0 fused units (session 26,
#: docs/DECISIONS.md); until then 1.5 minhde units over the motion part's normal spread,
#: which the speed-conditioned motion part's sharper spread made 7.0 fused units: the same
#: motion evidence held back, but most windows then drew all K futures.
EARLY_STOP_MARGINS: Final[dict[ScorerName, float]] = {
    "minhde": 1.5,
    "minfde": 1.5,
    "minade": 1.5,
    "fused": 3.0,
}

#: Seconds a smoothed score must stay above the threshold before an alert starts
#: (``alerting.min_duration_s``): the rule a threshold is calibrated for, and the rule
#: offline reports count alerts, false ones and detected events by.
ALERT_MIN_DURATION_S = 0.5

#: Model frames a person may go unseen before the live scorer forgets their track: a person
#: unseen for more and seen again starts over (a full window before the next score; live, a
#: new smoother too), and offline scores (:func:`pipelines.clip_scoring.live_ends`) start the
#: track's windows over there too.
TRACK_MAX_MISSING = 60

#: Frame rate of a model's training footage when its checkpoint does not record one
#: (AIHub2: ~30 fps). A model's windows are so many frames *at its rate*: frames of a
#: camera at another rate are placed on the model's time axis by their time
#: (:func:`forecasting.windows.model_frames`) before windows are cut, the missing ones
#: interpolated like any gap. Without it a 15 fps camera shows the model twice the motion
#: per frame: AIHub2 test, seed-0 default, every other frame kept, AUC 95.14 -> 92.86
#: renumbered, 95.35 placed by time (docs/DECISIONS.md, session 20).
MODEL_FPS = 30.0
#: Rates within this fraction of a model's count as its own (29.97 fps is 30; a rate told from
#: timestamps rounded to 10 ms is within it after a second or two).
SAME_RATE = 0.05
