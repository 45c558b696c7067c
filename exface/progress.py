"""Progress bars that name the stage they count ("embedding bank chunks"), not Lightning's
"Predicting DataLoader 0"."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar


class StageProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar for a ``Trainer.predict`` run, labelled with what the batches are.

    ``stage`` is the label ("embedding bank chunks", "synthesizing identity work items"); the
    count and rate are tqdm's. Pass it in the Trainer's callbacks with progress bars enabled.
    """

    def __init__(self, stage: str, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.stage = stage

    @property
    def predict_description(self) -> str:
        return self.stage

    def on_predict_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                               dataloader_idx: int = 0) -> None:
        # the base class does the same, then labels the bar "<description> DataLoader <i>"
        if not self.has_dataloader_changed(dataloader_idx):
            return
        total = self.total_predict_batches_current_dataloader
        bar = self.predict_progress_bar
        bar.reset()
        bar.total = total if total != float("inf") else None
        bar.initial = 0
        bar.set_description(self.stage)


def stage_callbacks(stage: str, enabled: bool) -> list[StageProgressBar]:
    """``[StageProgressBar(stage)]`` when progress is shown, else ``[]`` (pass ``enable_progress_bar=enabled``)."""
    return [StageProgressBar(stage)] if enabled else []
