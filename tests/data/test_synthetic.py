import json

from frcnn.data.synthetic import generate


def test_reproducible_and_varied(tmp_path):
    a = generate(tmp_path / "a", num_train=12, num_val=4, seed=3)
    b = generate(tmp_path / "b", num_train=12, num_val=4, seed=3)
    ja = json.loads((a / "annotations" / "train.json").read_text())
    assert ja == json.loads((b / "annotations" / "train.json").read_text())
    assert (a / "train" / "000005.png").read_bytes() == (b / "train" / "000005.png").read_bytes()
    c = generate(tmp_path / "c", num_train=12, num_val=4, seed=4)
    assert json.loads((c / "annotations" / "train.json").read_text()) != ja
    sides = [max(x["bbox"][2:]) for x in ja["annotations"]]
    assert min(sides) < 32 and max(sides) > 64
    assert {x["category_id"] for x in ja["annotations"]} <= {1, 3, 5, 7, 9}
    assert {(i["height"], i["width"]) for i in ja["images"]} == {(192, 256), (256, 192)}
    jv = json.loads((a / "annotations" / "val.json").read_text())
    assert len(jv["images"]) == 4
