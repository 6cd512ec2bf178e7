"""Where a run directory keeps what each stage writes, spelled once.

<run_dir>/data/            prepared data (manifest, image cache; synthetic/ beside it)
          baseline/model   the plain baseline classifier      (dermae train)
          baseline_seeds/  more seeds of it, as teacher members
          cnn_teacher/     CNN teacher members at their own budget and size
          synth/           VAE, UNet, samples' quality         (dermae synth ...)
          pretrain/encoder the MAE encoder                     (dermae pretrain)
          teacher/model    the fine-tuned ViT teacher          (dermae finetune)
          teacher_ensemble/model  the distilled ensemble, when distill.teachers has 2+
          student/model    the distilled student               (dermae distill)
          evaluate/        test metrics per model              (dermae evaluate)
          ablate/          the ablation                        (dermae ablate)
          export/          ONNX + int8                         (dermae export)
          stages/          the pipeline's done marks and timings
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MODEL = "model"
BASELINE = "baseline"
TEACHER = "teacher"
ENSEMBLE = "teacher_ensemble"
STUDENT = "student"
PRETRAIN = "pretrain"


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))  # accept str paths too

    def model(self, stage: str) -> Path:
        """A classifier stage's saved model folder, e.g. model("baseline")."""
        return self.root / stage / MODEL

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def baseline_model(self) -> Path:
        return self.model(BASELINE)

    @property
    def teacher_model(self) -> Path:
        return self.model(TEACHER)

    @property
    def ensemble_model(self) -> Path:
        return self.model(ENSEMBLE)

    @property
    def student_model(self) -> Path:
        return self.model(STUDENT)

    @property
    def pretrain(self) -> Path:
        return self.root / PRETRAIN

    @property
    def synth(self) -> Path:
        return self.root / "synth"

    @property
    def evaluate(self) -> Path:
        return self.root / "evaluate"

    @property
    def ablate(self) -> Path:
        return self.root / "ablate"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def stages(self) -> Path:
        return self.root / "stages"
