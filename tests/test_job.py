"""One job (pipeline/job.py): what its two keys hold. ``config_hash`` changes with everything that
changes a row, ``train_hash`` only with what changes the weights (so an evaluation-only change
re-evaluates from the checkpoint). The committed rows' keys: test_layout.py."""
from __future__ import annotations

import pipeline.job
from helpers import TINY, TRAIN
from models.scoring import ScoreConfig
from pipeline.evaluate import EvalConfig
from pipeline.train import TrainConfig


def test_config_hash_covers_what_changes_results(tiny_mvtec):
    root = tiny_mvtec

    def h(**kw):
        spec = dict(data_root=root, category="widget", model="cae", dataset="d", image_size=32,
                    train=TRAIN, model_overrides=TINY["cae"])
        spec.update(kw)
        return pipeline.job.JobSpec(**spec).config_hash()

    base = h()
    changed = [h(train=TrainConfig(min_steps=0, epochs=2, batch_size=4)),
               h(train=TrainConfig(min_steps=0, epochs=1, batch_size=4, seed=1)),
               h(image_size=64), h(eval_config=EvalConfig(threshold_rule="val_p99")), h(dataset="other"),
               h(category="fabric"), h(eval_config=EvalConfig(score=ScoreConfig(score_reduce="max"))),
               h(eval_config=EvalConfig(eval_size=128)), h(data_fingerprint="0123456789abcdef"),
               h(model="vae", model_overrides=TINY["vae"])]
    assert base not in changed and len(set(changed)) == len(changed)
    same = TrainConfig(min_steps=0, epochs=1, batch_size=4, progress=True, num_threads=3, device="cpu")
    assert h(train=same) == base


def test_train_hash_covers_the_weights_and_not_the_evaluation(tiny_mvtec):
    root = tiny_mvtec

    def spec(**kw):
        return pipeline.job.JobSpec(**{**dict(data_root=root, category="widget", model="cae", dataset="d",
                                              image_size=32, train=TRAIN, model_overrides=TINY["cae"]), **kw})

    base = spec()
    for ev in (EvalConfig(threshold_rule="val_p99"), EvalConfig(score=ScoreConfig(score_map="ssim")),
               EvalConfig(eval_size="original")):
        other = spec(eval_config=ev)
        assert other.train_hash() == base.train_hash() and other.config_hash() != base.config_hash()
    assert spec(data_fingerprint="0123456789abcdef").train_hash() != base.train_hash()
    assert spec(train=TrainConfig(min_steps=0, epochs=1, batch_size=4, seed=1)).train_hash() != base.train_hash()
