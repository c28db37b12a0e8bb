"""Two CPU processes under torchrun (gloo): synchronized updates, frozen parameters, rank-0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    sys.path.insert(0, {tests!r})
    torch.set_num_threads(1)
    from surgery_helpers import speech_batch, tiny_model
    from vits_surgery import _files
    from vits_surgery.surgery.plan import SurgeryPlan
    from vits_surgery.surgery.trainer import SurgicalTrainer, TrainConfig

    out = {out!r}
    rank = int(os.environ["RANK"])
    writes = []
    original_write = _files.atomic_write
    def spy(path, write):
        writes.append(str(path))
        return original_write(path, write)
    _files.atomic_write = spy

    from vits_surgery.surgery import runtime
    grads = {{}}  # per reduction (discriminator, generator, ...): this rank's gradients before and after
    original_reduce = runtime.all_reduce_gradients
    def flat(params):
        return torch.cat([p.grad.reshape(-1).clone() if p.grad is not None else torch.zeros(p.numel())
                          for p in params])
    def reduce_spy(params, bad, world_size):
        local = flat(params)
        result = original_reduce(params, bad, world_size)
        grads.setdefault(len(grads), {{"local": local, "reduced": flat(params)}})
        return result
    runtime.all_reduce_gradients = reduce_spy

    model = tiny_model(seed=rank)  # different on each rank: the trainer broadcasts rank 0's weights
    data = [speech_batch(model.config, 1, seed=i, max_seconds=0.3) for i in range(4)]
    for i, batch in enumerate(data):
        batch.ids = [f"b{{i}}"]
    seen = []
    class Recording(SurgicalTrainer):
        def training_step(self, batch, noise=None):
            seen.extend(batch.ids)
            return super().training_step(batch, noise)
    plan = SurgeryPlan(train=["duration_predictor", "decoder.ups.2"])
    trainer = Recording(model, plan, data, out_dir=out, config=TrainConfig(progress=False, seed=0, save_every=2))
    start = {{n: p.detach().clone() for n, p in model.named_parameters()}}
    trainer.fit(2)
    trained = {{n for n, p in model.named_parameters() if p.requires_grad}}
    report = {{
        "world": trainer.world_size,
        "start": {{n: p.double().sum().item() for n, p in start.items()}},
        "end": {{n: p.detach().double().sum().item() for n, p in model.named_parameters()}},
        "changed": sorted(n for n, p in model.named_parameters() if not torch.equal(p, start[n])),
        "trained": sorted(trained),
        "writes": writes,
        "seen": seen,
    }}
    with open(os.path.join(out, f"rank{{rank}}.json"), "w") as f:
        json.dump(report, f)
    torch.save(grads, os.path.join(out, f"rank{{rank}}_grads.pt"))
    """
)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch built without gloo")
def test_two_process_gloo_training(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert (r0["seen"], r1["seen"]) == (["b0", "b2"], ["b1", "b3"])  # a plain list is strided by rank
    assert r0["start"] == r1["start"]  # broadcast at construction
    assert r0["end"] == r1["end"]  # different batches per rank, identical updates
    g0, g1 = (torch.load(out / f"rank{r}_grads.pt", weights_only=True) for r in (0, 1))
    assert len(g0) == len(g1) >= 2  # the generator's and the discriminator's first windows
    for i in g0:
        local0, local1 = g0[i]["local"], g1[i]["local"]
        assert not torch.equal(local0, local1) and local0.abs().sum() > 0  # the ranks saw different data
        torch.testing.assert_close(g0[i]["reduced"], (local0 + local1) / 2)  # the mean, not the sum
        assert torch.equal(g0[i]["reduced"], g1[i]["reduced"])
    trained = set(r0["trained"])
    assert trained == {n for n in r0["start"] if n.startswith(("duration_predictor.", "decoder.ups.2.", "discriminator."))}
    assert set(r0["changed"]) == trained  # frozen parameters untouched, every trained one moved
    assert r0["writes"] and not r1["writes"]  # rank 0 alone writes
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002"]
    assert not (out / ".lock").exists()
