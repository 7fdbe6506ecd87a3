"""Optimizer / lr schedule (golden solver.json), weight loading (golden c2_loading.json)
and checkpoint files: original-format .pth, shape-mismatch skipping, atomic saves, safety."""
import logging
import os
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from atss_core.config import cfg as default_cfg
from atss_core.modeling.detector import build_detection_model
from atss_core.solver import WarmupMultiStepLR, make_lr_scheduler, make_optimizer
from atss_core.utils import checkpoint as checkpoint_module
from atss_core.utils.c2_model_loading import _load_c2_pickled_weights, _rename_c2_blob
from atss_core.utils.checkpoint import Checkpointer, DetectronCheckpointer
from atss_core.utils.model_serialization import load_state_dict
from atss_core.utils.model_zoo import cache_url
from conftest import REPO_ROOT, load_golden

CONFIGS = {name: REPO_ROOT / "configs" / "atss" / f"{name}.yaml"
           for name in ("atss_R_50_FPN_1x", "atss_dcnv2_R_50_FPN_1x")}


def _config(config_name=None, **solver):
    cfg = default_cfg.clone()
    if config_name is not None:
        cfg.merge_from_file(str(CONFIGS[config_name]))
    cfg.merge_from_list(["MODEL.WEIGHT", "", "MODEL.DEVICE", "cpu"])
    for key, value in solver.items():
        setattr(cfg.SOLVER, key, value)
    return cfg


def _build_model(config_name):
    """The real detector from the repo config."""
    return build_detection_model(_config(config_name))


def _module_with(named_tensors):
    """An nn.Module whose state_dict() holds exactly ``named_tensors`` (dotted name, value);
    an nn.Parameter value becomes a parameter, a plain tensor a buffer."""
    root = nn.Module()
    for name, value in named_tensors:
        *path, leaf = name.split(".")
        module = root
        for part in path:
            if part not in module._modules:
                module.add_module(part, nn.Module())
            module = module._modules[part]
        if isinstance(value, nn.Parameter):
            module.register_parameter(leaf, value)
        else:
            module.register_buffer(leaf, value)
    return root


def _module_with_parameters(names_and_requires_grad):
    return _module_with([(name, nn.Parameter(torch.zeros(1), requires_grad=requires_grad))
                         for name, requires_grad in names_and_requires_grad])


def _golden_keys_model(config_name):
    """Stand-in with the golden state-dict names and shapes of ``config_name`` (values -1,
    FrozenBN running statistics 0 and 1 as in the freshly built model)."""
    named_tensors = []
    for name, info in load_golden(f"keys_{config_name}.json")["keys"].items():
        if name.endswith("running_mean"):
            value = torch.zeros(info["shape"])
        elif name.endswith("running_var"):
            value = torch.ones(info["shape"])
        else:
            value = torch.full(info["shape"], -1.0)
        if info["kind"] == "parameter":
            value = nn.Parameter(value, requires_grad=info["requires_grad"])
        named_tensors.append((name, value))
    return _module_with(named_tensors)


def _groups_by_name(optimizer, model):
    name_of = {id(param): name for name, param in model.named_parameters()}
    groups = {}
    for group in optimizer.param_groups:
        assert len(group["params"]) == 1
        groups[name_of[id(group["params"][0])]] = {"lr": group["lr"],
                                                   "weight_decay": group["weight_decay"]}
    return groups


def _check_optimizer_against_golden(model, golden):
    cfg = _config(BASE_LR=golden["solver_cfg"]["BASE_LR"],
                  WEIGHT_DECAY=golden["solver_cfg"]["WEIGHT_DECAY"])
    optimizer = make_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.SGD)
    assert len(optimizer.param_groups) == golden["optimizer"]["num_param_groups"] == 101
    for group in optimizer.param_groups:
        assert group["momentum"] == golden["optimizer"]["momentum"]
        assert group["dampening"] == 0 and group["nesterov"] is False
    groups = _groups_by_name(optimizer, model)
    assert groups == golden["per_parameter"]
    assert not set(groups) & set(golden["excluded_frozen_parameters"])


def test_optimizer_groups_follow_golden_name_rule():
    golden = load_golden("solver.json")
    names = [(name, True) for name in golden["per_parameter"]]
    names += [(name, False) for name in golden["excluded_frozen_parameters"]]
    _check_optimizer_against_golden(_module_with_parameters(names), golden)


def test_optimizer_groups_of_r50_model_match_golden():
    golden = load_golden("solver.json")
    model = _build_model("atss_R_50_FPN_1x")
    frozen = [name for name, param in model.named_parameters() if not param.requires_grad]
    assert frozen == golden["excluded_frozen_parameters"]
    _check_optimizer_against_golden(model, golden)


def test_dcn_offsets_get_their_lr_factor():
    model = _module_with_parameters([("conv2.offset.weight", True), ("conv2.offset.bias", True),
                                     ("conv2.conv.weight", True)])
    cfg = _config(BASE_LR=0.01, DCONV_OFFSETS_LR_FACTOR=0.5)
    groups = _groups_by_name(make_optimizer(cfg, model), model)
    assert groups["conv2.offset.weight"]["lr"] == pytest.approx(0.005)
    assert groups["conv2.offset.bias"]["lr"] == pytest.approx(0.01)  # 0.01 * 2 * 0.5
    assert groups["conv2.conv.weight"]["lr"] == pytest.approx(0.01)


@pytest.mark.parametrize("method", ["constant", "linear"])
def test_lr_schedule_matches_golden(method):
    golden = load_golden("solver.json")["lr_schedule"][method]
    model = _module_with_parameters([("conv.weight", True), ("conv.bias", True)])
    cfg = _config(BASE_LR=golden["base_lr_weight"], STEPS=tuple(golden["steps"]),
                  GAMMA=golden["gamma"], WARMUP_FACTOR=golden["warmup_factor"],
                  WARMUP_ITERS=golden["warmup_iters"], WARMUP_METHOD=method)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_lr_scheduler(cfg, optimizer)
    weight_lrs, bias_lrs = [], []
    for _ in golden["lr_weight_by_last_epoch"]:
        weight_lrs.append(optimizer.param_groups[0]["lr"])
        bias_lrs.append(optimizer.param_groups[1]["lr"])
        optimizer.step()
        scheduler.step()
    assert weight_lrs == pytest.approx(golden["lr_weight_by_last_epoch"], rel=1e-12, abs=0)
    assert bias_lrs == pytest.approx(golden["lr_bias_by_last_epoch"], rel=1e-12, abs=0)


def test_scheduler_rejects_bad_settings():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="SOLVER.STEPS must be increasing"):
        WarmupMultiStepLR(optimizer, (500, 300))
    with pytest.raises(ValueError, match="WARMUP_METHOD"):
        WarmupMultiStepLR(optimizer, (300,), warmup_method="cosine")


# --------------------------------------------------------------------------- Caffe2 .pkl

@pytest.fixture(scope="module")
def synthetic_pkl(tmp_path_factory):
    """The golden README's synthetic Detectron file: blob i (sorted) filled with 1000 + i."""
    blobs = load_golden("c2_loading.json")["synthetic_pkl"]["blobs"]
    weights = {blob["name"]: np.full(blob["shape"], blob["constant"], dtype=np.float32)
               for blob in blobs}
    path = tmp_path_factory.mktemp("c2") / "R-50.pkl"
    path.write_bytes(pickle.dumps(weights, protocol=2))
    return path


def test_c2_blob_renaming_matches_golden():
    golden = load_golden("c2_loading.json")["renamed_by__rename_weights_for_resnet"]
    stage_names = ["1.2", "2.3", "3.5", "4.2"]
    renamed = {blob: _rename_c2_blob(blob, stage_names) for blob in golden}
    assert renamed == golden


def test_c2_pickle_reader_accepts_plain_and_blobs_dicts(synthetic_pkl, tmp_path):
    weights = _load_c2_pickled_weights(synthetic_pkl)
    golden_blobs = load_golden("c2_loading.json")["synthetic_pkl"]["blobs"]
    assert sorted(weights) == [blob["name"] for blob in golden_blobs]
    assert weights["conv1_w"].shape == (64, 3, 7, 7)
    assert np.all(weights["conv1_w"] == 1001.0)

    wrapped = tmp_path / "wrapped.pkl"
    wrapped.write_bytes(pickle.dumps({"blobs": {"conv1_w": np.ones((2, 3), np.float32)}},
                                     protocol=2))
    assert np.array_equal(_load_c2_pickled_weights(wrapped)["conv1_w"], np.ones((2, 3)))


_CODE_RAN = []


def _record_code_execution():
    _CODE_RAN.append(True)
    return np.zeros(1, np.float32)


class _Malicious:
    def __reduce__(self):
        return (_record_code_execution, ())


def test_c2_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"conv1_w": _Malicious()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load .*_record_code_execution"):
        _load_c2_pickled_weights(path)
    assert not _CODE_RAN


@pytest.mark.parametrize("model_source", ["golden_keys", "built"])
@pytest.mark.parametrize("config_name", ["atss_R_50_FPN_1x", "atss_dcnv2_R_50_FPN_1x"])
def test_c2_loading_matches_golden(config_name, model_source, synthetic_pkl, caplog):
    """Loaded into a stand-in with the golden key names and into the real model."""
    golden = load_golden("c2_loading.json")
    expected = golden["results"][config_name]
    blob_by_constant = {blob["constant"]: blob["name"]
                        for blob in golden["synthetic_pkl"]["blobs"]}
    if model_source == "built":
        model = _build_model(config_name)
    else:
        model = _golden_keys_model(config_name)
    before = {key: value.clone() for key, value in model.state_dict().items()}

    cfg = _config(config_name)
    with caplog.at_level(logging.INFO):
        extra = DetectronCheckpointer(cfg, model).load(str(synthetic_pkl))
    assert extra == {}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    # Trace each model key back to its blob through the constant it now holds.
    blob_to_keys = {blob: [] for blob in expected["blob_to_model_keys"]}
    not_loaded = []
    for key, value in model.state_dict().items():
        constant = value.flatten()[0].item() if value.numel() else None
        if constant in blob_by_constant and torch.all(value == constant):
            blob_to_keys[blob_by_constant[constant]].append(key)
        else:
            not_loaded.append(key)
            assert torch.equal(value, before[key]), f"{key} changed but holds no blob"
    assert blob_to_keys == expected["blob_to_model_keys"]
    assert sum(map(len, blob_to_keys.values())) == expected["num_model_keys_loaded"] == 159
    assert sorted(not_loaded) == sorted(expected["model_keys_not_loaded"])
    state = model.state_dict()
    for key in state:
        if key.endswith("running_mean"):
            assert torch.all(state[key] == 0), key
        elif key.endswith("running_var"):
            assert torch.all(state[key] == 1), key


def test_catalog_name_resolves_to_cached_url(tmp_path, monkeypatch):
    golden = load_golden("c2_loading.json")["catalog"]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / "R-50.pkl"
    model = _module_with_parameters([("backbone.body.stem.conv1.weight", True)])
    checkpointer = DetectronCheckpointer(_config(), model)
    with pytest.raises(FileNotFoundError) as error:
        checkpointer.load(golden["MODEL.WEIGHT"])
    message = str(error.value)
    assert "\n" not in message
    assert golden["resolves_to"] in message and str(cached) in message

    # Once the file is put there by hand, the same name loads without any download.
    cached.write_bytes(pickle.dumps({"conv1_w": np.full((1,), 7.0, np.float32)}, protocol=2))
    checkpointer.load(golden["MODEL.WEIGHT"])
    assert model.backbone.body.stem.conv1.weight.item() == 7.0
    assert cache_url(golden["resolves_to"]) == str(cached)


def test_unknown_catalog_name_and_missing_file_give_one_line_errors(tmp_path):
    checkpointer = DetectronCheckpointer(_config(), nn.Linear(2, 2))
    with pytest.raises(FileNotFoundError, match=r"^catalog://Nope/R-50 is not in the ModelCatalog"):
        checkpointer.load("catalog://Nope/R-50")
    for missing in (tmp_path / "nothing.pth", tmp_path / "nothing.pkl"):
        with pytest.raises(FileNotFoundError, match=f"weights file {missing} does not exist"):
            checkpointer.load(str(missing))


# --------------------------------------------------------------------------- .pth files

class _TinyHead(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4))
        self.rpn = nn.Module()
        self.rpn.head = nn.Module()
        self.rpn.head.cls_logits = nn.Conv2d(4, num_classes, 3)
        self.rpn.head.bbox_pred = nn.Conv2d(4, 4, 3)


def _assert_same_weights(model_a, model_b, skip=()):
    state_b = model_b.state_dict()
    for key, value in model_a.state_dict().items():
        if key not in skip:
            assert torch.equal(value, state_b[key]), key


def test_original_format_checkpoint_round_trip(tmp_path):
    """A published ATSS checkpoint: DDP keys ("module."), optimizer, scheduler, iteration."""
    torch.manual_seed(1)
    source = _TinyHead(80)
    cfg = _config(BASE_LR=0.01, STEPS=(60000, 80000))
    optimizer = make_optimizer(cfg, source)
    scheduler = make_lr_scheduler(cfg, optimizer)
    published = {
        "model": {f"module.{key}": value for key, value in source.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "iteration": 90000,
    }
    path = tmp_path / "ATSS_R_50_FPN_1x.pth"
    torch.save(published, path)

    torch.manual_seed(2)
    target = _TinyHead(80)
    extra = DetectronCheckpointer(cfg, target).load(str(path))
    _assert_same_weights(source, target)
    assert extra == {}  # fine-tuning from MODEL.WEIGHT starts at iteration 0

    # A bare state dict (no "model" entry) loads the same way.
    bare = tmp_path / "bare.pth"
    torch.save(source.state_dict(), bare)
    torch.manual_seed(3)
    target = _TinyHead(80)
    DetectronCheckpointer(cfg, target).load(str(bare))
    _assert_same_weights(source, target)


def test_pth_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": _Malicious()}, path)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load .*evil.pth") as error:
        Checkpointer(nn.Linear(2, 2)).load(str(path))
    assert "\n" not in str(error.value)
    assert not _CODE_RAN


def test_other_num_classes_skips_head_with_one_warning(tmp_path, caplog):
    torch.manual_seed(1)
    coco = _TinyHead(80)
    path = tmp_path / "coco.pth"
    torch.save({"model": coco.state_dict()}, path)
    torch.manual_seed(2)
    voc = _TinyHead(20)
    fresh_cls = {key: value.clone() for key, value in voc.rpn.head.cls_logits.state_dict().items()}
    with caplog.at_level(logging.INFO):
        Checkpointer(voc).load(str(path))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "rpn.head.cls_logits.weight (20, 4, 3, 3)" in warnings[0]
    assert "rpn.head.cls_logits.bias (20,)" in warnings[0]
    assert "bbox_pred" not in warnings[0]
    skip = {"rpn.head.cls_logits.weight", "rpn.head.cls_logits.bias"}
    _assert_same_weights(voc, coco, skip=skip)
    for key, value in voc.rpn.head.cls_logits.state_dict().items():
        assert torch.equal(value, fresh_cls[key])


def test_loading_logs_one_summary_line_and_the_keys_at_debug(tmp_path, caplog):
    """8 keys: 6 in the file, 2 (the box head) missing from it."""
    source = _TinyHead(3)
    state = {key: value for key, value in source.state_dict().items() if "bbox_pred" not in key}
    path = tmp_path / "partial.pth"
    torch.save({"model": state}, path)
    logger_name = "atss_core.utils.model_serialization"
    with caplog.at_level(logging.INFO, logger=logger_name):
        Checkpointer(_TinyHead(3)).load(str(path))
    lines = [r.getMessage() for r in caplog.records if r.name == logger_name]
    assert lines == [f"loaded 6 of 8 keys from {path}; skipped: 2 model keys not in the file keep "
                     "their current values (rpn.head.bbox_pred.bias, rpn.head.bbox_pred.weight)"]
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger=logger_name):
        Checkpointer(_TinyHead(3)).load(str(path))
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(debug) == 6 and all(" loaded from " in line for line in debug)


def test_weights_that_do_not_fit_are_an_error_for_evaluation(tmp_path):
    """test_net and the demo load with allow_shape_mismatch=False: a skipped head would give a
    half-random model, so a mismatch is a one-line error naming a key and its two shapes."""
    torch.save({"model": _TinyHead(80).state_dict()}, tmp_path / "coco.pth")
    model = _TinyHead(20)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(ValueError) as error:
        Checkpointer(model).load(str(tmp_path / "coco.pth"), allow_shape_mismatch=False)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'coco.pth'}: 2 weights do not fit the model")
    assert "e.g. rpn.head.cls_logits.bias (20,) <- rpn.head.cls_logits.bias (80,);" in message
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())


def test_longest_suffix_wins():
    model = _module_with_parameters([("body.layer1.0.conv1.weight", True),
                                     ("body.stem.conv1.weight", True)])
    load_state_dict(model, {"conv1.weight": torch.full((1,), 1.0),
                            "layer1.0.conv1.weight": torch.full((1,), 2.0)})
    assert model.body.stem.conv1.weight.item() == 1.0
    assert model.body.layer1._modules["0"].conv1.weight.item() == 2.0


def test_save_writes_state_and_last_checkpoint(tmp_path):
    model = _TinyHead(3)
    checkpointer = Checkpointer(model, save_dir=str(tmp_path), save_to_disk=True)
    checkpointer.save("model_0000005", iteration=5)
    # Relative to the folder, so that a copied or moved folder resumes from its own files.
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000005.pth"
    saved = torch.load(tmp_path / "model_0000005.pth", weights_only=True)
    assert saved["iteration"] == 5 and set(saved) == {"model", "iteration"}
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000005.pth"]

    # A non-main process never writes.
    Checkpointer(model, save_dir=str(tmp_path / "other"), save_to_disk=False).save("x")
    assert not (tmp_path / "other").exists()


def test_crash_while_saving_keeps_last_checkpoint_complete(tmp_path, monkeypatch):
    torch.manual_seed(1)
    model = _TinyHead(3)
    checkpointer = Checkpointer(model, save_dir=str(tmp_path), save_to_disk=True)
    checkpointer.save("model_0000001", iteration=1)
    saved_weights = {key: value.clone() for key, value in model.state_dict().items()}

    real_save = torch.save

    def crash_mid_write(data, f):
        real_save(data, f)
        f.truncate(100)  # half-written file, then the process "dies"
        raise KeyboardInterrupt

    with torch.no_grad():
        model.rpn.head.bbox_pred.weight.add_(1)
    monkeypatch.setattr(checkpoint_module.torch, "save", crash_mid_write)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_0000002", iteration=2)
    monkeypatch.undo()

    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_0000001.pth")
    resumed = _TinyHead(3)
    extra = Checkpointer(resumed, save_dir=str(tmp_path)).load()
    assert extra == {"iteration": 1}
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, saved_weights[key]), key

    # A crash while re-pointing last_checkpoint leaves the old pointer intact.
    def crash_on_replace(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.os, "replace", crash_on_replace)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.tag_last_checkpoint(str(tmp_path / "model_0000009.pth"))
    monkeypatch.undo()
    assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_0000001.pth")
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]


def test_moved_output_dir_still_resumes(tmp_path):
    model = _TinyHead(3)
    (tmp_path / "run").mkdir()
    Checkpointer(model, save_dir=str(tmp_path / "run"), save_to_disk=True).save("model_final")
    (tmp_path / "run").rename(tmp_path / "moved")
    checkpointer = Checkpointer(_TinyHead(3), save_dir=str(tmp_path / "moved"))
    assert Path(checkpointer.get_checkpoint_file()) == tmp_path / "moved" / "model_final.pth"
    checkpointer.load()
    _assert_same_weights(model, checkpointer.model)
