"""Write one split of a Pascal VOC, YOLO or LabelMe data set as a COCO-format JSON file.

    python scripts/convert.py --format voc --root /data/VOCdevkit/VOC2012 --split val --out val.json
    python scripts/convert.py --format yolo --root /data/mine --split train --out train.json

The layout under ``--root`` is that of ``conf/data/<format>.yaml``; Hydra overrides after the options
change it (``data.val.image_set=null``, ``data.class_names=[cat,dog]``). The file is the very dict that
``data=<format>`` trains and evaluates on (:mod:`frcnn.data.formats`): its ``file_name`` entries are
relative to the split's image folder, which is printed, so that ``data=coco`` with
``data.<split>.images=<that folder> data.<split>.annotations=<the file>`` gives the same data, and so
does any COCO tool. The class names of another split come from ``--classes-from`` (the training split's
converted file), so that both number classes alike.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from frcnn.cli import friendly_errors


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", required=True, choices=["voc", "yolo", "labelme"])
    parser.add_argument("--root", required=True, help="the data set's folder (data.root)")
    parser.add_argument("--split", default="train", choices=["train", "val"])
    parser.add_argument("--out", required=True, help="the COCO JSON file to write")
    parser.add_argument("--classes-from", default=None,
                        help="a COCO JSON (e.g. the converted training split) whose categories to use, in id order")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the data group, e.g. data.class_names=[a,b]")
    args = parser.parse_args()

    from frcnn.cli import compose_train
    from frcnn.data.coco import CategoryMap, load_coco
    from frcnn.data.formats import split_annotations

    cfg = compose_train([f"data={args.format}", f"data.root={_quoted(args.root)}", *args.overrides])
    categories = CategoryMap.from_categories(load_coco(args.classes_from).dataset["categories"]) if args.classes_from else None
    converted = split_annotations(cfg, args.split, categories)
    load_coco(converted)  # the checks training runs: duplicate ids, dangling annotations, unknown categories
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(converted.dataset))
    data = converted.dataset
    crowd = sum(a["iscrowd"] for a in data["annotations"])
    print(f"wrote {out}: {len(data['images'])} images, {len(data['annotations'])} boxes ({crowd} crowd regions), "
          f"{len(data['categories'])} classes {[c['name'] for c in data['categories']]}")
    print(f"file_name entries are relative to {cfg.data[args.split].images}")
    for line in converted.unreadable:
        print(f"left out (unreadable): {line}")
    for reason, n in converted.not_boxes:
        print(f"left out (not boxes): {n} {reason}")


def _quoted(value: str) -> str:
    """``value`` as a Hydra override's quoted string, so that a path holding a space, comma, bracket, ``=``,
    quote or ``${`` stays the path (Hydra's grammar: a backslash run before a quote or the end is doubled)."""
    value = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), value)
    return "'" + value.replace("${", "\\${") + "'"


if __name__ == "__main__":
    main()
