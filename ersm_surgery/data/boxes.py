"""Object boxes for an image folder, so that localization (claim (d)) and the background swap (claim (f))
can be measured on a user's data: ``--boxes FILE`` on ``evaluate``, ``run`` and ``reproduce``.

Three formats, told apart by what the path holds:

- a JSON object mapping each image's path relative to the data root (``"validation/3/00012.png"``) to
  ``[x0, y0, x1, y1]`` in pixels of the original image;
- a COCO instances JSON (``images``, ``annotations``, ``categories``): per image, the largest box whose
  category name is the image's class folder; ``file_name`` is matched to the path relative to the data
  root, else to the split folder, else by its base name when that is unique;
- a folder of Pascal VOC XML files: per file, the largest ``<object>`` whose ``<name>`` is the class; the
  file is matched by its path relative to the folder (``validation/3/00012.xml``), else by ``<filename>``.

Boxes are checked when read: a malformed entry, or a box outside its image, is one line naming the entry.
An image without a box is counted and left out of the box-based figures only. Boxes follow the images'
resize and crop (:meth:`~ersm_surgery.data.preprocessing.Preprocessing.map_box`).
"""
from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import DataError
from ._base import Box

__all__ = ["read_boxes", "WithBoxes", "attach_boxes"]

PixelBox = tuple[float, float, float, float]


def _bad(source: Path, entry: str, why: str, fix: str = "fix the entry or remove it") -> DataError:
    return DataError(f"boxes file {source}: entry {entry!r} {why}", fix)


def _box(source: Path, entry: str, value: Any) -> PixelBox:
    if not isinstance(value, (list, tuple)) or len(value) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise _bad(source, entry, f"is {json.dumps(value)[:60]}, not [x0, y0, x1, y1] in pixels")
    x0, y0, x1, y1 = (float(v) for v in value)
    if not (x1 > x0 and y1 > y0):
        raise _bad(source, entry, f"has x1 <= x0 or y1 <= y0 in {[x0, y0, x1, y1]}", "write it as [x0, y0, x1, y1]")
    return x0, y0, x1, y1


def _largest(boxes: list[PixelBox]) -> PixelBox | None:
    return max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1])) if boxes else None


def _plain(source: Path, data: dict) -> dict[str, PixelBox]:
    return {str(k).replace("\\", "/").removeprefix("./"): _box(source, str(k), v) for k, v in data.items()}


def _coco(source: Path, data: dict, labels: dict[str, str]) -> dict[str, PixelBox]:
    """``labels``: relative path -> class name of every image of the data."""
    try:
        names = {c["id"]: str(c["name"]) for c in data["categories"]}
        files = {im["id"]: str(im["file_name"]).replace("\\", "/") for im in data["images"]}
        found: dict[Any, list[tuple[str, PixelBox]]] = {}
        for i, a in enumerate(data["annotations"]):
            x, y, w, h = a["bbox"]
            entry = f"annotations[{i}]"
            found.setdefault(a["image_id"], []).append((names[a["category_id"]], _box(source, entry, [x, y, x + w,
                                                                                                       y + h])))
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"boxes file {source}: not a COCO instances file ({type(exc).__name__}: {exc})",
                        "give images, annotations (bbox [x, y, w, h]) and categories, or a JSON object "
                        "{path: [x0, y0, x1, y1]}") from exc
    names = _Names(labels)
    out = {}
    for image_id, name in files.items():
        rel = names.find(name)
        if rel is None:
            continue
        box = _largest([b for cls, b in found.get(image_id, []) if cls == labels[rel]])
        if box is not None:
            out[rel] = box
    return out


class _Names:
    """Where a name from an annotation file points: the path relative to the data root, else to the split
    folder ("3/00012.png" for "validation/3/00012.png"), else a base name that only one image has."""

    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = labels
        self.in_split = {rel.split("/", 1)[-1]: rel for rel in labels}
        self.by_base: dict[str, list[str]] = {}
        for rel in labels:
            self.by_base.setdefault(os.path.basename(rel), []).append(rel)

    def find(self, name: str) -> str | None:
        if name in self.labels:
            return name
        if name in self.in_split:
            return self.in_split[name]
        candidates = self.by_base.get(os.path.basename(name), [])
        return candidates[0] if len(candidates) == 1 else None


def _voc(source: Path, labels: dict[str, str]) -> dict[str, PixelBox]:
    by_stem = {os.path.splitext(rel)[0]: rel for rel in labels}
    names = _Names(labels)
    out = {}
    for xml in sorted(source.rglob("*.xml")):
        entry = xml.relative_to(source).as_posix()
        try:
            root = ET.parse(xml).getroot()
            rel = by_stem.get(os.path.splitext(entry)[0]) or names.find(root.findtext("filename") or "")
            if rel is None:
                continue
            boxes = []
            for obj in root.iter("object"):
                if (obj.findtext("name") or "").strip() != labels[rel]:
                    continue
                bb = obj.find("bndbox")
                # VOC counts pixels from 1: xmin 1 is the first column
                x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
                boxes.append(_box(source, entry, [x0 - 1, y0 - 1, x1, y1]))
        except (ET.ParseError, AttributeError, TypeError, ValueError) as exc:
            raise _bad(source, entry, f"is not a Pascal VOC annotation ({type(exc).__name__}: {exc})",
                       "give <object><name>CLASS</name><bndbox><xmin>...</xmin>...</bndbox></object>") from exc
        box = _largest(boxes)
        if box is not None:
            out[rel] = box
    return out


def read_boxes(path: str | os.PathLike, labels: dict[str, str], root: str | os.PathLike | None = None
               ) -> dict[str, PixelBox]:
    """Read a boxes file (any of the three formats) into ``{path relative to the data root: pixel box}``.

    Args:
        path: the JSON file or the folder of VOC XML files.
        labels: relative path -> class folder name of the images to find boxes for (COCO and VOC pick the
            largest box of that class).
        root: the data root: a plain JSON entry must name one of ``labels`` or another file under it (another
            split's image, whose box is read and not used).

    Raises:
        DataError: the file is missing or malformed, or an entry is (named in the message).
    """
    source = Path(path).expanduser()
    if source.is_dir():
        return _voc(source, labels)
    if not source.is_file():
        raise DataError(f"boxes file {source} does not exist", "pass --boxes FILE.json (or a folder of VOC XML files)")
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"boxes file {source} is not readable JSON ({exc})",
                        "write a JSON object {\"validation/CLASS/IMAGE\": [x0, y0, x1, y1]} or a COCO file") from exc
    if not isinstance(data, dict):
        raise DataError(f"boxes file {source} holds a JSON {type(data).__name__}, not an object",
                        "write a JSON object {\"validation/CLASS/IMAGE\": [x0, y0, x1, y1]} or a COCO file")
    if {"images", "annotations"} <= set(data):
        return _coco(source, data, labels)
    boxes = _plain(source, data)
    unknown = [k for k in boxes if k not in labels and not (root is not None and (Path(root) / k).is_file())]
    if unknown:
        raise _bad(source, unknown[0], "names no image of the data (paths are relative to the data root)",
                   f"write it like {next(iter(labels), 'validation/CLASS/IMAGE.png')!r}")
    return boxes


class WithBoxes:
    """A folder data set with boxes: every attribute of the data set, plus ``has_boxes`` and :meth:`box`.

    Boxes are checked against each image's size when attached; ``missing`` counts the images without one.
    """

    has_boxes = True

    def __init__(self, dataset: Any, boxes: dict[str, PixelBox], source: str | os.PathLike) -> None:
        self.dataset = dataset
        self.source = str(source)
        self._boxes: list[tuple[Box, int, int] | None] = []  # normalised box of the original, its width, height
        root = Path(dataset.root)
        for path, _ in dataset.samples:
            rel = Path(path).relative_to(root).as_posix() if Path(path).is_relative_to(root) else path
            box = boxes.get(rel)
            if box is None:
                self._boxes.append(None)
                continue
            with Image.open(path) as im:
                w, h = im.size
            x0, y0, x1, y1 = box
            if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
                raise _bad(Path(source), rel, f"box {[x0, y0, x1, y1]} lies outside its {w}x{h} image",
                           "give pixel coordinates of the original image, inside [0, width] x [0, height]")
            self._boxes.append(((x0 / w, y0 / h, x1 / w, y1 / h), w, h))
        self.missing = sum(b is None for b in self._boxes)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["dataset"], name)

    def box(self, index: int) -> Box | None:
        """The box in [0, 1] of the evaluation transform's output (after its resize and crop), or None."""
        entry = self._boxes[index]
        if entry is None:
            return None
        box, w, h = entry
        return self.dataset.preprocessing.map_box(box, w, h)

    def description(self) -> dict[str, Any]:
        return {**self.dataset.description(), "boxes": self.source, "images_without_box": self.missing}


def attach_boxes(dataset: Any, path: str | os.PathLike) -> WithBoxes:
    """``dataset`` (a folder data set) with the boxes of ``path`` (see :func:`read_boxes`).

    Raises:
        DataError: the data set is not an image folder, or the boxes file or one of its entries is bad.
    """
    if not hasattr(dataset, "samples") or not hasattr(dataset, "root"):
        raise DataError("--boxes applies to an image folder (--data-dir)", "drop --boxes: built-in data has boxes")
    root = Path(dataset.root)
    train = getattr(dataset, "classes", [])
    labels = {Path(p).relative_to(root).as_posix(): train[t] for p, t in dataset.samples
              if Path(p).is_relative_to(root)}
    return WithBoxes(dataset, read_boxes(path, labels, root), path)
