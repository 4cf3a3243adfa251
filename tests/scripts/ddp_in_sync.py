"""Run under torchrun by tests/test_distributed.py: two epochs of DDP training on the data folder in
argv[1], then check that every rank holds the same weights and saw different batches."""

import sys

import torch
import torch.distributed as dist

sys.path.insert(0, sys.argv[2])  # tests/, for conftest.tiny_config
from conftest import tiny_config  # noqa: E402

from classifier_lib.data.dataset import load_data  # noqa: E402
from classifier_lib.training.trainer import Trainer, setup_system  # noqa: E402

config = tiny_config(sys.argv[1], **{"system.threads": 1})
device = setup_system(config)
trainer = Trainer(config, load_data(config.data, 0), device)
first_batches = []
for _ in range(2):
    trainer.train_epoch()
    trainer.state.epoch += 1
weights = torch.cat([p.detach().flatten() for p in trainer.state.model.parameters()])
gathered = [torch.empty_like(weights) for _ in range(dist.get_world_size())]
dist.all_gather(gathered, weights)
order = torch.Generator().manual_seed(0)
if dist.get_rank() == 0:
    assert all(torch.equal(gathered[0], other) for other in gathered[1:]), "ranks hold different weights"
    assert trainer.state.steps_per_epoch == 2, trainer.state.steps_per_epoch  # 36 images, 4 batches of 8, 2 per rank
    print("in sync", flush=True)
dist.destroy_process_group()
