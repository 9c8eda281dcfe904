"""Issue #17: `run` with its defaults on builtin:clutter, across model families.

For each family, `ersm-surgery run MODEL --stages 2,3 --dataset builtin:clutter --json` runs in a child
process exactly as a user types it; printed per family: the base's best validation top-1 (and whether it
passed the gate), the ERSM and baseline top-1 on the evaluated images, the mean hard-mask density of each
mask layer, wall time and the child's CPU time (user + sys, getrusage). Goal: every base >= 60% on the
4-class default (chance 25%) within the main job's 5-minute bound, or the one-line stop of the gate. Each
line also says what the base's time budget bought (pipeline/base_budget.py): epochs, unique pictures, the
measured seconds per epoch and the base's actual time.

The 5-minute bound is for an idle 2-core CPU; on a shared machine wall time is inflated, so the CPU
minutes are printed beside it. ``--base-only`` trains only the bases (the library's ``train_base`` with
the run's defaults), for iterating on the rule one family at a time.

    python benchmarks/bench_run_families.py [--families resnet18,convnext_atto] [--base-only]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FAMILIES = ["resnet18", "mobilenetv3_large_100", "efficientnet_b0", "convnext_atto", "regnetx_002"]
BOUND_MIN = 5.0


def _child(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return done, wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


_BASE_ONLY = """
import json, sys
from pathlib import Path
from ersm_surgery.pipeline.settings import RUN_BASE_IMAGES, RUN_EPOCHS
from ersm_surgery.pipeline.run import PipelineSettings, _config, _num_classes
from ersm_surgery.pipeline.base_training import train_base
s = PipelineSettings(model=sys.argv[1], stages=[2, 3], output=sys.argv[2], batch_size=32,
                     base_epochs=RUN_EPOCHS["base_epochs"], data_options={"num_classes": 4},
                     base_data_options={"train_size": RUN_BASE_IMAGES})
config = _config(s, s.base_epochs or 1, 1e-3, no_masks=True, data_options=s.base_data_options, base=True)
print(json.dumps(train_base(s, config, Path(sys.argv[2]) / "base", _num_classes(s))))
"""


def _densities(summary: dict) -> str:
    s = summary.get("summary", {})
    means = {k.removeprefix("density.").removesuffix(".mean"): v for k, v in s.items()
             if k.startswith("density.") and k.endswith(".mean")}
    # the std across images too: the price matrix's cell rule asks for more than 0.05
    return " ".join(f"{name} {v:.2f}±{s.get(f'density.{name}.std', float('nan')):.2f}" for name, v in means.items())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated timm model names")
    p.add_argument("--base-only", action="store_true", help="train only the bases (no injection, no evaluation)")
    args = p.parse_args()
    beside = Path(sys.executable).with_name("ersm-surgery")
    exe = str(beside) if beside.exists() else shutil.which("ersm-surgery")
    if exe is None:
        sys.exit("ersm-surgery is not installed: pip install -e . first")
    load = os.getloadavg()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch threads default, Python "
          f"{platform.python_version()}; load average at start {load[0]:.1f} (above ~2 the machine is shared and "
          "wall times are inflated: read the CPU minutes)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.families.split(","):
            out = Path(tmp) / model
            if args.base_only:
                done, wall, cpu = _child([sys.executable, "-c", _BASE_ONLY, model, str(out)])
            else:
                done, wall, cpu = _child([exe, "-q", "run", model, "--stages", "2,3", "--dataset", "builtin:clutter",
                                          "--json", "-o", str(out)])
            timing = f"wall {wall / 60:.2f} min, CPU {cpu / 60:.2f} min, load {os.getloadavg()[0]:.1f}"
            if done.returncode != 0:
                lines = (done.stdout + done.stderr).strip().splitlines()
                print(f"{model}: STOPPED: {lines[-1] if lines else done.returncode}; {timing}", flush=True)
                continue
            summary = json.loads(done.stdout[done.stdout.index("{"):])  # run --json prints indented JSON
            if args.base_only:
                gate = summary["gate"]
                plan = summary.get("epochs") or {}
                print(f"{model}: [{plan.get('reason', '')}] base top-1 {100 * gate['top1']:.1f}% "
                      f"(gate {100 * gate['threshold']:.1f}%, "
                      f"{'pass' if gate['passed'] else 'FAIL'}; last epoch {summary['last'].get('val_top1', 0):.1f}%); "
                      f"{'; '.join(summary['settings']['reasons'][:2])}; {timing}", flush=True)
                continue
            s = summary["summary"]
            rule = summary["base"].get("settings") or {}
            plan = summary["base"].get("epochs") or {}
            pictures = f" x {plan['train_images']} pictures" if plan.get("train_images") else ""
            chosen = (f"[rule: lr {rule.get('lr', 0):.2g}, warm-up {rule.get('warmup_epochs', 0):g} ep"
                      f"{', head zeroed' if rule.get('zero_head') else ''}; budget: {plan.get('epochs')} ep{pictures}, "
                      f"~{plan.get('seconds_per_epoch') or 0:.0f} s/epoch measured, base took "
                      f"{summary['timings'].get('base', 0):.0f} s] ")
            print(f"{model}: {chosen}base top-1 {100 * s['base.top1']:.1f}% (chance {100 * s['base.chance']:.1f}%)"
                  f"{' UNTRAINED' if s.get('base.untrained') else ''}; ERSM {100 * s['top1.model']:.1f}% vs baseline "
                  f"{100 * s['top1.baseline']:.1f}%; density {_densities(summary)}; {timing} "
                  f"[{'within' if wall / 60 <= BOUND_MIN else 'OVER'} {BOUND_MIN:.0f} min wall]", flush=True)


if __name__ == "__main__":
    main()
