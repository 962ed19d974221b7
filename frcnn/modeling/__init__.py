"""The detector, one module per pipeline stage, read in data-flow order:

``structures`` (the typed contracts) and ``box_ops`` (batched box maths) →
``preprocess`` (normalize, resize, pad, batch) → ``backbones`` (stride-16 trunk; box head) →
``anchors`` · ``box_coder`` · ``matching`` · ``sampling`` (pure functions over batched tensors) →
``rpn`` (objectness, deltas, the RPN loss) → ``proposals`` (decode, clip, top-k, NMS) →
``roi_heads`` (RoI sampling, RoIAlign, box head, predictor, loss) → ``postprocess`` (per-class NMS) →
``model`` (:class:`FasterRCNN`, which wires them together).

Nothing here imports a wing (``data``, ``engine``, ``evaluation``, ``explain``, ``tracking``, ``export``).
"""

from frcnn.modeling.model import FasterRCNN, ModelOutput

__all__ = ["FasterRCNN", "ModelOutput"]
