"""--boxes for image folders: three file formats, boxes that follow the resize and crop, one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ersm_surgery.data import create_dataset
from ersm_surgery.data.boxes import attach_boxes
from ersm_surgery.data.preprocessing import Preprocessing
from ersm_surgery.errors import DataError
from ersm_surgery.eval.images import load_images
from ersm_surgery.eval.localization import box_to_token_mask
from tests.conftest import run

W, H = 96, 64  # landscape originals: the centre crop cuts the sides
# pixel boxes of the objects drawn into the validation images (x0, y0, x1, y1)
BOXES = {"validation/disc/0.png": (20, 10, 60, 50), "validation/disc/1.png": (40, 8, 90, 40),
         "validation/square/0.png": (30, 20, 66, 56), "validation/square/1.png": (8, 4, 40, 36)}


def _image(box: tuple[int, int, int, int] | None) -> Image.Image:
    px = np.zeros((H, W, 3), np.uint8)
    if box is not None:
        x0, y0, x1, y1 = box
        px[y0:y1, x0:x1] = 255
    return Image.fromarray(px)


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for split in ("train", "validation"):
        for cls in ("disc", "square"):
            (root / split / cls).mkdir(parents=True)
            for i in range(2):
                rel = f"{split}/{cls}/{i}.png"
                _image(BOXES.get(rel)).save(root / rel)
    (root / "validation" / "square" / "2.png").write_bytes((root / "validation" / "square" / "1.png").read_bytes())
    return root


def _plain(tmp_path: Path) -> Path:
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({k: list(v) for k, v in BOXES.items()}))
    return path


def _coco(tmp_path: Path) -> Path:
    images, annotations = [], []
    for i, (rel, (x0, y0, x1, y1)) in enumerate(BOXES.items()):
        cls = rel.split("/")[1]
        images.append({"id": i, "file_name": rel.split("/", 1)[1], "width": W, "height": H})  # relative to the split
        annotations.append({"id": 2 * i, "image_id": i, "category_id": 1 if cls == "disc" else 2,
                            "bbox": [x0, y0, x1 - x0, y1 - y0]})
        # a larger box of the other class, and a smaller one of this class: both must be passed over
        annotations.append({"id": 2 * i + 1, "image_id": i, "category_id": 2 if cls == "disc" else 1,
                            "bbox": [0, 0, W, H]})
        annotations.append({"id": 100 + i, "image_id": i, "category_id": 1 if cls == "disc" else 2,
                            "bbox": [x0, y0, 2, 2]})
    path = tmp_path / "coco.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "disc"}, {"id": 2, "name": "square"}]}))
    return path


def _voc(tmp_path: Path) -> Path:
    root = tmp_path / "voc"
    for rel, (x0, y0, x1, y1) in BOXES.items():
        cls = rel.split("/")[1]
        xml = root / rel.replace(".png", ".xml")
        xml.parent.mkdir(parents=True, exist_ok=True)
        other = "square" if cls == "disc" else "disc"
        xml.write_text(f"<annotation><filename>{rel.split('/')[-1]}</filename><size><width>{W}</width>"
                       f"<height>{H}</height></size>"
                       f"<object><name>{cls}</name><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
                       f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
                       f"<object><name>{other}</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>{W}</xmax>"
                       f"<ymax>{H}</ymax></bndbox></object></annotation>")
    return root


PRE = Preprocessing(input_size=(3, 32, 32), crop_pct=0.8)  # shorter side 64 -> 40, 60x40, centre 32x32 crop


def _validation(folder: Path):
    return create_dataset(str(folder), split="validation", preprocessing=PRE)


@pytest.mark.parametrize("make", [_plain, _coco, _voc])
def test_every_format_gives_the_same_boxes_and_counts_the_images_without_one(folder, tmp_path, make) -> None:
    data = attach_boxes(_validation(folder), make(tmp_path))
    assert data.missing == 1 and len(data) == 5
    images = load_images(data, 5)
    rows = ~torch.isnan(images.boxes).any(dim=1)
    assert rows.tolist() == [True, True, True, True, False]  # square/2.png has no box
    expected = [PRE.map_box((x0 / W, y0 / H, x1 / W, y1 / H), W, H) for x0, y0, x1, y1 in BOXES.values()]
    assert images.boxes[rows] == pytest.approx(torch.tensor(expected))
    assert images.description["images_without_box"] == 1


def test_a_drawn_box_lands_on_the_token_grid_where_the_object_is(folder, tmp_path) -> None:
    """The transformed image's bright tokens are the tokens the mapped box covers (resize and crop applied)."""
    data = attach_boxes(_validation(folder), _plain(tmp_path))
    images = load_images(data, 5)
    grid = 8
    naive_misses = 0
    for i, (x0, y0, x1, y1) in enumerate(BOXES.values()):
        pixels = images.display(i).mean(dim=-1)  # (32, 32) in [0, 1]
        bright = pixels.reshape(grid, 4, grid, 4).mean(dim=(1, 3)) > 0.5
        from_box = box_to_token_mask(images.boxes[i : i + 1], grid, grid)[0]
        # the same tokens, up to a token whose centre sits on the object's edge
        assert (bright ^ from_box).sum() <= 2, (i, bright.int(), from_box.int())
        naive = box_to_token_mask(torch.tensor([[x0 / W, y0 / H, x1 / W, y1 / H]]), grid, grid)[0]
        naive_misses += int((bright ^ naive).sum())
    assert naive_misses > 20  # the box without the resize and crop would miss: the check can fail


@pytest.mark.parametrize(("content", "fragment"), [
    ({"validation/disc/0.png": "wide"}, "entry 'validation/disc/0.png' is \"wide\""),
    ({"validation/disc/0.png": [10, 10, 5, 20]}, "x1 <= x0"),
    ({"validation/disc/0.png": [0, 0, W + 5, 10]}, f"lies outside its {W}x{H} image"),
    ({"validation/disc/9.png": [0, 0, 5, 5]}, "entry 'validation/disc/9.png' names no image"),
    ([1, 2], "holds a JSON list"),
    ({"images": [{"id": 1}], "annotations": []}, "not a COCO instances file"),
])
def test_a_bad_entry_is_one_error_naming_it(folder, tmp_path, content, fragment) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DataError) as info:
        attach_boxes(_validation(folder), path)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_a_malformed_voc_file_is_named(folder, tmp_path) -> None:
    root = _voc(tmp_path)
    (root / "validation" / "disc" / "0.xml").write_text("<annotation><object><name>disc</name><bndbox>"
                                                         "<xmin>a</xmin></bndbox></object></annotation>")
    with pytest.raises(DataError, match="entry 'validation/disc/0.xml' is not a Pascal VOC annotation"):
        attach_boxes(_validation(folder), root)


def test_boxes_on_the_command_line_fail_fast_in_one_line(folder, tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"validation/disc/0.png": [0, 0, 500, 10]}))
    out = tmp_path / "run"
    result = run("run", "test_resnet", "--stages", "2", "--data-dir", folder, "--boxes", bad, "-o", out)
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and "validation/disc/0.png" in lines[0], result.output
    assert "Traceback" not in result.output and not (out / "base").exists()
    result = run("run", "test_resnet", "--stages", "2", "--boxes", _plain(tmp_path), "-o", out)
    assert result.exit_code == 2 and "--data-dir only" in result.output


def test_evaluate_measures_localization_on_a_folder_with_boxes(folder, tmp_path) -> None:
    import ersm_surgery

    torch.manual_seed(0)
    model = ersm_surgery.inject("test_resnet", input_size=(3, 32, 32), num_classes=2, stages=[2, 3])
    ersm_surgery.save(model, tmp_path / "m")
    out = tmp_path / "eval"
    result = run("evaluate", tmp_path / "m", "--data-dir", folder, "--boxes", _voc(tmp_path), "--num-images", 5,
                 "-b", 5, "--img-size", 32, "--crop-pct", 0.8, "--figure-images", 5, "--metrics",
                 "accuracy,localization", "-o", out, "--json")
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert r["localization"]["images"] == 4 and r["localization"]["images_without_box"] == 1
    assert r["data"]["images_without_box"] == 1 and any("1 of 5 images have no box" in n for n in r["notes"])
    assert r["per_image"]["boxed"] == [0, 1, 2, 3]
    assert r["background_swap"]["images"] == 4 and "localization_mass" in r["intervals"]
    assert (out / "masks.png").is_file() and (out / "background.png").is_file()
