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

#: The default scorer: ``minhde``, not ``fused``. ``fused`` (motion + posture) is 5.8 AUC
#: points better on AIHub2 test (96.0 +- 0.5 vs 90.2 +- 0.8, 3 seeds) but blind to a person
#: freezing: a still body is *more* likely under the posture flows, so the posture part
#: cancels the motion part (injected freezes: AUC 0.47 fused, 0.91 minhde; docs/DECISIONS.md,
#: session 7). Operators who want it set ``scorer: fused``.
DEFAULT_SCORER: Final = "minhde"

#: Every scorer (:mod:`forecasting.scoring`); the config, the CLI and the registry derive
#: their lists from this one.
ScorerName = Literal["minhde", "minfde", "minade", "kde", "nll", "posture", "fused"]
SCORERS: tuple[ScorerName, ...] = get_args(ScorerName)

#: The sampler ``calibrate``, cold start and the service use unless told otherwise: the
#: checkpoint's own (``default``, the GRU-SNF default for every trained model), so a
#: threshold is served with the sampler it was calibrated with.
DEFAULT_SAMPLER: Final = "default"

#: Posture flows of the fused scorer (:mod:`forecasting.posture`): flows averaged, epochs per
#: flow, weight of the posture score.
POSTURE_FLOWS = 8
POSTURE_EPOCHS = 10
POSTURE_WEIGHT = 1.0

#: Early stop (``forecaster.early_stop_margin``, score units): live scoring stops drawing
#: futures for a window whose score from the first member's futures is this far below the
#: alert threshold (docs/DECISIONS.md, issue 21).
EARLY_STOP_MARGIN = 1.5
