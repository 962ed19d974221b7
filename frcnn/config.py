"""Checks on composed configs, run before any data is generated or loaded, and the values they allow.

Hydra rejects unknown keys (the configs are in struct mode) but not wrong values: ``trainer.amp=fp32``
would end in a ``KeyError`` once the data set is generated and loaded, ``trainer.device=gpu`` in a
``RuntimeError`` from torch. :func:`validate_train_config`, :func:`validate_evaluate_config` and
:func:`validate_infer_config` raise :class:`ConfigError` naming the key and the allowed values instead,
and check that every ``_target_`` imports and takes the keys given beside it. A key that a custom config
file leaves out is not checked; the code that reads it decides.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from frcnn.data.formats import FORMATS
from frcnn.errors import ConfigError

__all__ = [
    "AMP_DTYPES",
    "ConfigError",
    "amp_dtype",
    "parse_duration",
    "resolve_device",
    "validate_evaluate_config",
    "validate_infer_config",
    "validate_train_config",
]

# Mixed precision choices: "none" computes in full fp32; fp16 needs a GradScaler when training.
AMP_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
_DEVICE_CHOICES = "auto | cpu | cuda | cuda:N (e.g. cuda:1) | mps"
_ABSENT = object()
# Keys Hydra's instantiate reads itself, not passed to the target.
_HYDRA_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})


def amp_dtype(value: Any, key: str) -> torch.dtype | None:
    """The autocast dtype ``value`` (``none | bf16 | fp16``) names; ``key`` is quoted in the error."""
    if not isinstance(value, str) or value not in AMP_DTYPES:
        raise ConfigError(f"{key}={value!r} is not valid; allowed: {' | '.join(AMP_DTYPES)} (none computes in fp32)")
    return AMP_DTYPES[value]


def resolve_device(value: Any, key: str = "device") -> torch.device:
    """The device ``value`` names (``auto``: CUDA when available, else CPU), checked against this machine."""
    if not isinstance(value, str) or not _DEVICE.fullmatch(value):
        raise ConfigError(f"{key}={value!r} is not valid; allowed: {_DEVICE_CHOICES}")
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(value)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{key}={value!r} but this machine has no CUDA device; use {key}=cpu or {key}=auto")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{key}={value!r} but this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{key}={value!r} but MPS is not available on this machine; use {key}=cpu or {key}=auto")
    return device


def parse_duration(value: Any, key: str = "trainer.max_time") -> float | None:
    """Seconds in a duration: a number of seconds, ``"HH:MM:SS"`` or ``"DD:HH:MM:SS"``; None: no limit."""
    if value is None:
        return None
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        else:
            parts = [float(p) for p in str(value).split(":")]
            if not 1 <= len(parts) <= 4:
                raise ValueError
            seconds = sum(p * f for p, f in zip(reversed(parts), (1, 60, 3600, 86400)))
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ConfigError(f"{key}={value!r} is not valid; allowed: null, seconds > 0, or HH:MM:SS / DD:HH:MM:SS")
    return seconds


def check_resume(resume: Any) -> None:
    """``train.resume`` names a file, or a :class:`ConfigError` says what to pass."""
    if not Path(str(resume)).is_file():
        raise ConfigError(f"train.resume={resume} is not a file; pass the last.pt of the run to continue, or train.resume=null")


def validate_train_config(cfg: DictConfig) -> None:
    """Check a composed ``conf/train.yaml`` (what ``train(cfg)`` reads); raise :class:`ConfigError`."""
    _no_missing_values(cfg, skip=_unreferenced_data_root(cfg))
    amp_dtype(_get(cfg, "trainer.amp", "none"), "trainer.amp")
    max_time = _get(cfg, "trainer.max_time")
    if max_time is not _ABSENT:
        parse_duration(max_time, "trainer.max_time")
    resolve_device(_get(cfg, "trainer.device", "auto"), "trainer.device")
    for key in ("trainer.max_iters", "trainer.log_period", "trainer.checkpoint_period", "trainer.max_overflow_streak"):
        _number(cfg, key, integer=True, low=1)
    _number(cfg, "trainer.eval_period", integer=True, low=0)
    _number(cfg, "trainer.clip_grad_norm", low=0, low_open=True, nullable=True)
    _number(cfg, "trainer.num_threads", integer=True, low=1, nullable=True)
    _number(cfg, "seed", integer=True, low=0)
    resume = _get(cfg, "train.resume")
    if resume not in (None, _ABSENT):
        check_resume(resume)
    init_from = _get(cfg, "train.init_from")
    if init_from not in (None, _ABSENT) and not Path(str(init_from)).is_file():
        raise ConfigError(
            f"train.init_from={init_from} is not a file; pass a checkpoint to start from (a run's best.pt, or one "
            "written by scripts/import_weights.py), or train.init_from=null"
        )

    _validate_train_data(cfg)
    if _get(cfg, "optim.reference_batch_size") is not _ABSENT:
        raise ConfigError("optim.reference_batch_size is now trainer.reference_batch_size (optim holds only the optimizer's "
                          "arguments); move it there")
    _number(cfg, "trainer.reference_batch_size", integer=True, low=1)
    _number(cfg, "optim.lr", low=0, low_open=True)
    _number(cfg, "optim.weight_decay", low=0)
    _number(cfg, "optim.momentum", low=0, high=1)
    _number(cfg, "schedule.warmup_iters", integer=True, low=0)
    _number(cfg, "schedule.warmup_factor", low=0, high=1)
    _number(cfg, "schedule.gamma", low=0, low_open=True)
    _number(cfg, "schedule.final_factor", low=0, high=1)
    for key in ("hflip", "jitter_prob"):  # albumentations would refuse these deep inside its pipeline
        _number(cfg, f"data.augment.{key}", low=0, high=1)
    for key in ("brightness", "contrast", "saturation"):
        _number(cfg, f"data.augment.{key}", low=0)
    _number(cfg, "data.augment.hue", low=0, high=0.5)

    _validate_model(cfg)
    for key in ("model", "optim", "schedule", "data.augment"):
        node = _get(cfg, key)
        if isinstance(node, DictConfig):
            _check_targets(node, key)


def _validate_train_data(cfg: DictConfig) -> None:
    """``data.*`` of a training config."""
    for key in ("data.num_classes", "data.batch_size", "data.eval_batch_size", "data.min_size_test", "data.max_size"):
        _number(cfg, key, integer=True, low=1)
    workers = _get(cfg, "data.num_workers")
    if workers != "auto" and not (_is_int(workers) and workers >= 0) and workers is not _ABSENT:
        raise ConfigError(f"data.num_workers={_show(workers)} is not valid; allowed: auto (the machine's cores, less one, at most 4) "
                          "or an integer >= 0")
    _number(cfg, "data.min_box_size", low=0)
    _number(cfg, "data.max_bad_image_fraction", low=0, high=1)
    _number(cfg, "data.max_pixels", integer=True, low=1, nullable=True)
    _choice(cfg, "data.pin_memory", ("auto", True, False))
    _choice(cfg, "data.format", FORMATS)
    sizes = _get(cfg, "data.min_size_train")
    if sizes is not _ABSENT:
        values = list(sizes) if isinstance(sizes, (ListConfig, list, tuple)) else [sizes]
        if not values or not all(_is_int(s) and s >= 1 for s in values):
            raise ConfigError(f"data.min_size_train={_show(sizes)} is not valid; allowed: a list of shorter-side sizes >= 1, e.g. [600]")


def _validate_model(cfg: DictConfig) -> None:
    _choice(cfg, "model.backbone.norm", ("auto", "frozen_bn", "bn", "gn"))
    _number(cfg, "model.backbone.freeze_at", integer=True, low=0, nullable=True)
    if str(_get(cfg, "model.backbone._target_", "")).endswith("ResNetC4"):
        _choice(cfg, "model.backbone.depth", (18, 34, 50, 101))

    rpn, roi = "model.rpn", "model.roi_heads"
    _choice(cfg, f"{rpn}.loss_normalization", ("paper", "sampled"))
    _choice(cfg, f"{roi}.pooler", ("align", "pool"))
    for key in (f"{rpn}.fg_iou_thresh", f"{rpn}.bg_iou_thresh", f"{roi}.fg_iou_thresh", f"{roi}.bg_iou_thresh_hi",
                f"{roi}.bg_iou_thresh_lo", f"{roi}.score_thresh"):
        _number(cfg, key, low=0, high=1)
    for key in (f"{rpn}.nms_thresh", f"{roi}.nms_thresh", f"{rpn}.positive_fraction", f"{roi}.positive_fraction"):
        _number(cfg, key, low=0, high=1, low_open=True)
    for key in (f"{rpn}.batch_size_per_image", f"{roi}.batch_size_per_image", f"{rpn}.pre_nms_topk_train",
                f"{rpn}.post_nms_topk_train", f"{rpn}.pre_nms_topk_test", f"{rpn}.post_nms_topk_test",
                f"{roi}.detections_per_image", f"{roi}.pooler_resolution"):
        _number(cfg, key, integer=True, low=1)
    _number(cfg, f"{roi}.sampling_ratio", integer=True, low=0)
    _number(cfg, f"{rpn}.min_size", low=0)
    _number(cfg, f"{rpn}.reg_loss_weight", low=0, nullable=True)
    for a, b in ((f"{rpn}.bg_iou_thresh", f"{rpn}.fg_iou_thresh"), (f"{roi}.bg_iou_thresh_lo", f"{roi}.bg_iou_thresh_hi")):
        lo, hi = _get(cfg, a), _get(cfg, b)
        if lo is not _ABSENT and hi is not _ABSENT and lo > hi:
            raise ConfigError(f"{a}={lo} is above {b}={hi}; the background IoU range must end at or below the foreground one")


def validate_evaluate_config(cfg: DictConfig) -> None:
    """Check a composed ``conf/evaluate.yaml``; raise :class:`ConfigError`."""
    _no_missing_values(cfg)
    amp_dtype(_get(cfg, "amp", "none"), "amp")
    resolve_device(_get(cfg, "device", "auto"), "device")
    _number(cfg, "batch_size", integer=True, low=1)
    _number(cfg, "num_workers", integer=True, low=0)
    _number(cfg, "max_pixels", integer=True, low=1, nullable=True)
    _choice(cfg, "backend", ("pycocotools", "faster_coco_eval"))
    _number(cfg, "proposals", integer=True, low=1, nullable=True)
    if not isinstance(_get(cfg, "analyze", False), bool):
        raise ConfigError(f"analyze={_show(cfg.analyze)} is not valid; allowed: true | false")
    _number(cfg, "analysis.score_thresh", low=0, high=1)
    _number(cfg, "analysis.worst_images", integer=True, low=0)
    _number(cfg, "analysis.calibration_bins", integer=True, low=1)
    predictions = _get(cfg, "predictions", None)
    if predictions is not None and not isinstance(predictions, str):
        if not (OmegaConf.is_list(predictions) and len(predictions) > 0 and all(isinstance(p, str) for p in predictions)):
            raise ConfigError(f"predictions={_show(predictions)} is not valid; give one results file or a list: predictions=[a.json,b.json]")
    if _get(cfg, "predictions", None) and not _get(cfg, "annotations", None):
        raise ConfigError("predictions=... needs annotations=/path/to/ground_truth.json")
    if not _get(cfg, "predictions", None) and not _get(cfg, "checkpoint", None):
        raise ConfigError("give checkpoint=/path/to/best.pt, or predictions=results.json annotations=gt.json")


def validate_infer_config(cfg: DictConfig) -> None:
    """Check a composed ``conf/infer.yaml``; raise :class:`ConfigError`."""
    _no_missing_values(cfg)
    if "amp" in cfg:
        amp_dtype(cfg.amp, "amp")
    resolve_device(_get(cfg, "device", "auto"), "device")
    _number(cfg, "score_thresh", low=0, high=1)
    _number(cfg, "max_pixels", integer=True, low=1, nullable=True)
    _number(cfg, "proposals", integer=True, low=1, nullable=True)
    if _get(cfg, "proposals", None) is not None and _get(cfg, "runtime", "torch") == "onnxruntime":
        raise ConfigError("proposals=... applies to runtime=torch; an ONNX file has its count built in (scripts/export.py proposals=...)")
    if not isinstance(_get(cfg, "optimize", True), bool):
        raise ConfigError(f"optimize={_show(cfg.optimize)} is not valid; allowed: true | false")
    runtime = _get(cfg, "runtime", "torch")
    if runtime not in ("torch", "onnxruntime"):
        raise ConfigError(f"runtime={_show(runtime)} is not valid; allowed: torch | onnxruntime")
    needed = "checkpoint" if runtime == "torch" else "onnx"
    if _get(cfg, needed, None) is None:
        what = "a trained checkpoint (.pt)" if runtime == "torch" else "the .onnx file of scripts/export.py"
        raise ConfigError(f"{needed} has no value; runtime={runtime} needs {what}: set {needed}=...")


def validate_export_config(cfg: DictConfig) -> None:
    """Check a composed ``conf/export.yaml``; raise :class:`ConfigError`."""
    _no_missing_values(cfg)
    _choice(cfg, "format", ["onnx"])
    _number(cfg, "opset", integer=True, low=16)  # RoiAlign's half_pixel mode (aligned=True) needs opset 16
    _number(cfg, "proposals", integer=True, low=1, nullable=True)
    _choice(cfg, "quantize", ["none", "int8"])
    _number(cfg, "calibration_images", integer=True, low=1)
    hw = _get(cfg, "sample_hw")
    if not isinstance(hw, ListConfig) or len(hw) != 2 or not all(_is_int(v) and v >= 32 for v in hw):
        raise ConfigError(f"sample_hw={_show(hw)} is not valid; allowed: [height, width], each >= 32")


def _get(cfg: DictConfig, key: str, default: Any = _ABSENT) -> Any:
    return OmegaConf.select(cfg, key, default=default)


def _show(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        return str(OmegaConf.to_container(value))
    return repr(value) if isinstance(value, str) else str(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _no_missing_values(node: DictConfig | ListConfig, key: str = "", skip: frozenset[str] = frozenset()) -> None:
    """The first ``???`` value (depth first) not in ``skip``, without resolving interpolations (they may point at it)."""
    for k in node.keys() if isinstance(node, DictConfig) else range(len(node)):
        full = (f"{key}.{k}" if key else str(k)) if isinstance(node, DictConfig) else f"{key}[{k}]"
        if OmegaConf.is_missing(node, k):
            if full in skip:
                continue
            raise ConfigError(f"{full} has no value (??? in the config); set it on the command line: {full}=...")
        if not OmegaConf.is_interpolation(node, k) and isinstance(node[k], (DictConfig, ListConfig)):
            _no_missing_values(node[k], full, skip)


def _unreferenced_data_root(cfg: DictConfig) -> frozenset[str]:
    """``{"data.root"}`` when it has no value and nothing in ``data`` points at it (both splits were given their
    own paths), so that it need not be set; else empty."""
    data = cfg.get("data")
    if not isinstance(data, DictConfig) or not OmegaConf.is_missing(data, "root"):  # ("in" is False for ???)
        return frozenset()
    try:
        OmegaConf.to_container(data, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException:
        return frozenset()  # something interpolates ${data.root}: the usual message
    return frozenset({"data.root"})


def _choice(cfg: DictConfig, key: str, allowed: Iterable[Any]) -> None:
    value = _get(cfg, key)
    allowed = tuple(allowed)
    # bool is an int in Python: compare types too, so that 1 is not taken for true.
    if value is not _ABSENT and not any(type(value) is type(a) and value == a for a in allowed):
        names = " | ".join(str(a).lower() if isinstance(a, bool) else str(a) for a in allowed)
        raise ConfigError(f"{key}={_show(value)} is not valid; allowed: {names}")


def _number(
    cfg: DictConfig,
    key: str,
    *,
    integer: bool = False,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    nullable: bool = False,
) -> None:
    """Check that ``key`` (if present) is a number (``integer``: an int) in the given range."""
    value = _get(cfg, key)
    if value is _ABSENT or (value is None and nullable):
        return
    ok = _is_int(value) if integer else (isinstance(value, (int, float)) and not isinstance(value, bool))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        kind = "an integer" if integer else "a number"
        bounds = [f"{'>' if low_open else '>='} {low}"] if low is not None else []
        bounds += [f"<= {high}"] if high is not None else []
        allowed = f"{kind} {' and '.join(bounds)}".strip() + (", or null" if nullable else "")
        raise ConfigError(f"{key}={_show(value)} is not valid; allowed: {allowed}")


def _check_targets(node: DictConfig | ListConfig, key: str) -> None:
    """Every ``_target_`` under ``node`` imports and accepts the keys given beside it (before anything is built)."""
    if isinstance(node, ListConfig):
        for i, item in enumerate(node):
            if isinstance(item, (DictConfig, ListConfig)):
                _check_targets(item, f"{key}[{i}]")
        return
    target = node.get("_target_") if "_target_" in node else None
    if isinstance(target, str):
        obj = _import(target, f"{key}._target_")
        _check_signature(obj, node, key, target)
    for k, v in node.items_ex(resolve=False):
        if k not in _HYDRA_KEYS and isinstance(v, (DictConfig, ListConfig)):
            _check_targets(v, f"{key}.{k}")


def _import(path: str, key: str) -> Any:
    """The object at dotted ``path``: the longest importable module prefix, then attributes."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError as err:
            if err.name is not None and not ".".join(parts[:i]).startswith(err.name):
                raise  # the module exists but one of its own imports is missing: not a config mistake
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        return obj
    raise ConfigError(f"{key}={path} cannot be imported; check the dotted path (e.g. frcnn.modeling.rpn.RPN)")


def _check_signature(obj: Any, node: DictConfig, key: str, target: str) -> None:
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):  # some builtins have no signature: let instantiate decide
        return
    kinds = {p.kind for p in params.values()}
    given = [k for k in node.keys() if k not in _HYDRA_KEYS]
    if inspect.Parameter.VAR_KEYWORD not in kinds:
        unknown = [k for k in given if k not in params or params[k].kind == inspect.Parameter.POSITIONAL_ONLY]
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]} is not a parameter of {target}; its parameters are: {_names(params)}")
    if not node.get("_partial_", False) and "_args_" not in node:
        required = [
            n for n, p in params.items()
            if p.default is p.empty and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n not in given
        ]
        if required:
            raise ConfigError(f"{key} lacks {key}.{required[0]}, a required parameter of {target}")


def _names(params: Mapping[str, inspect.Parameter]) -> str:
    return ", ".join(n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
