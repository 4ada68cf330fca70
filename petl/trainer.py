"""`MethodTrainer`: transformers' Trainer whose checkpoints hold only what a petl method trains.

The stock Trainer works on a petl model as it is: `save_pretrained` writes the whole model and, in the folder's
`petl/`, the method (petl.core). Its checkpoints then carry a copy of the frozen base model each (about 500 MB for
roberta-base, against a few MB of method). `MethodTrainer` saves the active method and the task head with
`petl.save` instead (petl's files, PEFT's too for LoRA), and reads them back when it resumes
(`train(resume_from_checkpoint=...)`) or loads the best checkpoint (`load_best_model_at_end`); the optimizer,
scheduler, RNG and data position resume as the Trainer keeps them. A checkpoint folder is then a `petl.save`
folder: `petl.load(base_model, checkpoint)` restores the method.

Only single-process and data-parallel training: DeepSpeed and FSDP shard the model state their own way and keep
the stock Trainer's saving.

    trainer = petl.MethodTrainer(model=petl.apply(model, "lora"), args=args, train_dataset=data)
    trainer.train()
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from transformers import Trainer
from transformers.trainer import TRAINING_ARGS_NAME

from petl.core import active_method, modules_of
from petl.io import load, save


class MethodTrainer(Trainer):
    """A Trainer for a model carrying a petl method: checkpoints and `save_model` hold the method and head only."""

    def _sharded(self) -> bool:
        return bool(self.is_deepspeed_enabled or self.is_fsdp_enabled)

    def _method_model(self):
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        modules_of(model)  # a clear error when the model carries no active petl method
        return model

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if self._sharded():
            return super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        _save_into(self._method_model(), Path(output_dir))
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if self._sharded():
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        model = self._method_model() if model is None else model
        load(model, resume_from_checkpoint, name=active_method(model))

    def _load_best_model(self) -> None:
        if self._sharded():
            return super()._load_best_model()
        model = self._method_model()
        load(model, self.state.best_model_checkpoint, name=active_method(model))


def _save_into(model, folder: Path) -> None:
    """petl.save's files into `folder`, beside what is already there (the Trainer's output folder holds the
    checkpoints; petl.save alone replaces a whole folder). The weights move in before the config that holds their
    checksum, so an interrupted save is refused on load rather than read half old."""
    from petl.io import CONFIG
    folder.mkdir(parents=True, exist_ok=True)
    staging = save(model, folder / ".petl-saving")
    try:
        for path in sorted(staging.iterdir(), key=lambda p: p.name == CONFIG):
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
