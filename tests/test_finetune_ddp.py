"""Two gloo processes on CPU: DDP keeps the ranks identical, and only rank 0 writes files."""
import hashlib
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

import ersm_surgery
from ersm_surgery.train import FinetuneConfig, RunInputs, finetune

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, source: str, root: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    config = FinetuneConfig(data="builtin:clutter", data_options={"size": 12, "num_classes": 4}, img_size=32,
                            epochs=2, batch_size=4, workers=0, seed=5)
    # each rank is given its own output folder: only rank 0's may appear
    result = finetune(RunInputs(source=source, output=os.path.join(root, f"out{rank}"), device="cpu"), config)
    digest = hashlib.sha256()
    for name, t in sorted(result.model.state_dict().items()):
        digest.update(name.encode() + t.detach().contiguous().numpy().tobytes())
    with open(os.path.join(root, f"rank{rank}.txt"), "w") as f:
        f.write(f"{digest.hexdigest()} {result.ranks_in_sync} {result.world_size} {result.updates}")


def test_two_gloo_processes_stay_identical_and_only_rank0_writes(tmp_path):
    source = tmp_path / "inj"
    model = ersm_surgery.inject("test_resnet", stages=[2, 3], num_classes=4, input_size=(3, 32, 32))
    ersm_surgery.save(model, source)
    mp.spawn(_worker, args=(2, _free_port(), str(source), str(tmp_path)), nprocs=2, join=True)
    reports = [(tmp_path / f"rank{r}.txt").read_text().split() for r in range(2)]
    assert reports[0] == reports[1], reports  # same weights and buffers, in sync, world size 2, same updates
    assert reports[0][1:3] == ["True", "2"]
    assert int(reports[0][3]) == 2 * 2  # 12 images over 2 ranks, batch 4 -> 2 steps per epoch, 2 epochs
    assert (tmp_path / "out0" / "last" / "train_state.pt").is_file()
    assert not (tmp_path / "out1").exists()
    loaded = ersm_surgery.load(tmp_path / "out0" / "last")
    assert len(ersm_surgery.masks(loaded)) == 2
