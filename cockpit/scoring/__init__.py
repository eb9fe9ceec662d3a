"""Win probability: point-in-time features, a calibrated model with reasons, and honest evaluation.

Importing this package (or building features) does not import scikit-learn: training and tree
prediction import it inside the functions that need it, so the TUI can show stored scores without
paying its import cost.

    result = train(histories, pipelines, owners, calendar, ScoringConfig())
    print(result.report.to_text())
    save_model(result.model, path)
    scores = load_model(path).score(open_histories, as_of=date.today())
"""

from cockpit.scoring.config import ScoringConfig
from cockpit.scoring.errors import ModelFileError, ScoringError, TrainingError
from cockpit.scoring.examples import ExampleSet, build_examples
from cockpit.scoring.features import FEATURE_NAMES, GROUP_NAMES, FeatureContext, features_at, make_context
from cockpit.scoring.files import data_fingerprint, load_model, save_model
from cockpit.scoring.metrics import Metrics, evaluate
from cockpit.scoring.model import ScoringModel
from cockpit.scoring.report import TargetReport, TrainReport
from cockpit.scoring.training import TrainResult, train

__all__ = [
    "FEATURE_NAMES",
    "GROUP_NAMES",
    "ExampleSet",
    "FeatureContext",
    "Metrics",
    "ModelFileError",
    "ScoringConfig",
    "ScoringError",
    "ScoringModel",
    "TargetReport",
    "TrainReport",
    "TrainResult",
    "TrainingError",
    "build_examples",
    "data_fingerprint",
    "evaluate",
    "features_at",
    "load_model",
    "make_context",
    "save_model",
    "train",
]
