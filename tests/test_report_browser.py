"""The HTML report renders in headless Chromium with every embedded image decoded.

A copy of the report gets a small script that, once the page has loaded, writes into the DOM how many
``<img>`` elements there are and how many are complete with a natural width > 0; Chromium's
``--dump-dom`` prints the DOM after load, and the test reads the marker back.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import ersm_surgery

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser"))
                 if p and Path(p).exists()), None)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not installed (/usr/bin/chromium absent; apt-get install -y chromium to run this)",
)

_CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  const m = document.createElement('div');
  m.id = 'ersm-check';
  m.textContent = `IMAGES ${imgs.length} LOADED ${ok} TABLES ${document.querySelectorAll('table').length}`;
  document.body.appendChild(m);
});
</script>"""


def _report(tmp_path: Path) -> tuple[Path, int]:
    from ersm_surgery.data import create_dataset
    from ersm_surgery.eval.figures import write_figures
    from ersm_surgery.eval.images import load_images
    from ersm_surgery.eval.report import write_report
    from ersm_surgery.eval.runner import EvalSettings, evaluate

    torch.manual_seed(0)
    model = ersm_surgery.inject("test_resnet", stages=[2, 3], input_size=(3, 32, 32), num_classes=4).eval()
    data = create_dataset("builtin:clutter", "validation", img_size=32, num_classes=4, size=4)
    images = load_images(data, 4, batch_size=4)
    settings = EvalSettings(batch_size=4, latency_repeats=1, occlusion_levels=(0.0, 0.5), occlusion_grid=4,
                            deletion_fractions=(0.0, 0.5), figure_images=2)
    result = evaluate(model, images, None, settings)
    figures = write_figures(result.results, result.samples, tmp_path)
    return write_report(result.results, figures, tmp_path / "report.html"), len(figures)


def test_report_renders_with_every_image_loaded(tmp_path: Path) -> None:
    report, n_figures = _report(tmp_path)
    assert n_figures >= 4
    checked = tmp_path / "checked.html"
    checked.write_text(report.read_text().replace("</body>", _CHECK + "</body>"))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
           checked.as_uri()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    found = re.search(r"IMAGES (\d+) LOADED (\d+) TABLES (\d+)", out.stdout)
    assert found, f"no marker in Chromium's DOM (exit {out.returncode}): {out.stderr[-2000:]}"
    total, loaded, tables = (int(v) for v in found.groups())
    assert total == n_figures and loaded == total, found.group(0)
    assert tables >= 4
