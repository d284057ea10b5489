"""Box utilities and non-maximum suppression on hand-computed cases."""

import logging

import numpy as np
import pytest
import torch

from utils.boxes import (
    box_iou,
    clip_boxes,
    scale_boxes,
    xywh2xyxy,
    xywhn2xyxy,
    xyxy2xywh,
    xyxy2xywhn,
)
from utils.nms import non_max_suppression


# ---------------------------------------------------------------- boxes
@pytest.mark.parametrize("lib", [torch.tensor, np.array])
def test_xyxy_xywh_known_values_and_round_trip(lib):
    xyxy = lib([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 4.0, 2.0]])
    xywh = xyxy2xywh(xyxy)
    assert np.allclose(np.asarray(xywh), [[20, 40, 20, 40], [2, 1, 4, 2]])
    assert type(xywh) is type(xyxy)
    assert np.allclose(np.asarray(xywh2xyxy(xywh)), np.asarray(xyxy))
    assert np.allclose(np.asarray(xyxy), [[10, 20, 30, 60], [0, 0, 4, 2]])  # input untouched


@pytest.mark.parametrize("lib", [torch.tensor, np.array])
def test_normalised_conversions(lib):
    xywhn = lib([[0.5, 0.5, 0.2, 0.4]])
    xyxy = xywhn2xyxy(xywhn, w=100, h=50, padw=3, padh=4)
    assert np.allclose(np.asarray(xyxy), [[43, 19, 63, 39]])
    back = xyxy2xywhn(xywhn2xyxy(xywhn, w=100, h=50), w=100, h=50)
    assert np.allclose(np.asarray(back), [[0.5, 0.5, 0.2, 0.4]])


def test_xyxy2xywhn_clip_limits_to_image():
    out = xyxy2xywhn(np.array([[-10.0, 0.0, 50.0, 120.0]]), w=100, h=100, clip=True)
    assert np.allclose(out, [[0.25, 0.5, 0.5, 1.0]])  # box clipped to (0, 0, 50, 100)


def test_box_iou_hand_values():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 4.0, 4.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0]])
    iou = box_iou(a, b)
    assert iou.shape == (2, 3)
    expected = [[50 / 150, 0.0, 1.0], [0.0, 0.0, 16 / 100]]
    assert torch.allclose(iou, torch.tensor(expected), atol=1e-6)


@pytest.mark.parametrize("lib", [torch.tensor, np.array])
def test_clip_boxes_in_place(lib):
    boxes = lib([[-5.0, -1.0, 700.0, 300.0]])
    clip_boxes(boxes, (240, 640))
    assert np.allclose(np.asarray(boxes), [[0, 0, 640, 240]])


@pytest.mark.parametrize("lib", [torch.tensor, np.array])
def test_scale_boxes_inverts_letterbox(lib):
    # a 480x640 (h, w) image letterboxed into 320x320: gain 0.5, resized 240x320, 40 px pad top and bottom
    original = np.array([[100.0, 50.0, 300.0, 250.0], [0.0, 0.0, 640.0, 480.0]])
    letterboxed = original * 0.5 + np.array([0, 40, 0, 40])
    out = scale_boxes((320, 320), lib(letterboxed), (480, 640))
    assert np.allclose(np.asarray(out), original)
    with_ratio_pad = scale_boxes((320, 320), lib(letterboxed), (480, 640), ratio_pad=((0.5, 0.5), (0, 40)))
    assert np.allclose(np.asarray(with_ratio_pad), original)


def test_scale_boxes_rounds_padding_and_clips():
    # 101x200 into 64x64: gain 0.32, pad (64 - 32.32) / 2 = 15.84 -> the letterbox used 16 px
    boxes = torch.tensor([[0.0, 16.0, 32.0, 32.0], [-10.0, 0.0, 70.0, 64.0]])
    scale_boxes((64, 64), boxes, (101, 200))
    assert torch.allclose(boxes[0], torch.tensor([0.0, 0.0, 100.0, 50.0]))
    assert torch.allclose(boxes[1], torch.tensor([0.0, 0.0, 200.0, 101.0]))  # clipped to the image


# ---------------------------------------------------------------- NMS
def _pred(*images):
    """Stack per-image rows (cx, cy, w, h, obj, cls scores...) into a (bs, n, 5+nc) tensor."""
    return torch.tensor(images, dtype=torch.float32)


OVERLAP_SAME = [[50, 50, 20, 20, 0.9, 1.0, 0.0], [52, 50, 20, 20, 0.8, 1.0, 0.0]]  # IoU 0.82, class 0
OVERLAP_DIFF = [[50, 50, 20, 20, 0.9, 1.0, 0.0], [52, 50, 20, 20, 0.8, 0.0, 1.0]]  # classes 0 and 1


def test_nms_suppresses_same_class_overlap():
    (out,) = non_max_suppression(_pred(OVERLAP_SAME))
    assert out.shape == (1, 6)
    assert torch.allclose(out[0], torch.tensor([40.0, 40.0, 60.0, 60.0, 0.9, 0.0]))


def test_nms_is_class_aware_unless_agnostic():
    (out,) = non_max_suppression(_pred(OVERLAP_DIFF))
    assert out[:, 5].tolist() == [0.0, 1.0]
    assert torch.allclose(out[:, 4], torch.tensor([0.9, 0.8]))
    (agn,) = non_max_suppression(_pred(OVERLAP_DIFF), agnostic=True)
    assert agn.shape == (1, 6) and agn[0, 5] == 0


def test_nms_iou_threshold_decides():
    (out,) = non_max_suppression(_pred(OVERLAP_SAME), iou_thres=0.9)  # 0.82 overlap is below 0.9: both kept
    assert out.shape[0] == 2


def test_nms_max_det_keeps_most_confident():
    rows = [[30 * k + 10, 10, 10, 10, 0.3 + 0.05 * k, 1.0] for k in range(10)]  # disjoint boxes
    (out,) = non_max_suppression(_pred(rows), max_det=3)
    assert torch.allclose(out[:, 4], torch.tensor([0.75, 0.7, 0.65]))


def test_nms_multi_label_one_row_per_class_above_threshold():
    rows = [[50, 50, 20, 20, 1.0, 0.9, 0.6, 0.1]]
    (multi,) = non_max_suppression(_pred(rows), conf_thres=0.5, multi_label=True)
    assert multi[:, 5].tolist() == [0.0, 1.0]
    assert torch.allclose(multi[:, 4], torch.tensor([0.9, 0.6]))
    (single,) = non_max_suppression(_pred(rows), conf_thres=0.5)
    assert single[:, 5].tolist() == [0.0]


def test_nms_conf_thres_uses_obj_times_cls():
    rows = [
        [50, 50, 20, 20, 0.9, 0.2, 0.0],  # conf 0.18: dropped
        [150, 50, 20, 20, 0.2, 1.0, 0.0],  # obj 0.2: dropped
        [250, 50, 20, 20, 0.6, 0.5, 0.0],  # conf 0.30: kept
    ]
    (out,) = non_max_suppression(_pred(rows), conf_thres=0.25)
    assert out.shape == (1, 6)
    assert out[0, 4].item() == pytest.approx(0.3)


def test_nms_classes_filter_and_tuple_input():
    (out,) = non_max_suppression((_pred(OVERLAP_DIFF), "features"), classes=[1])
    assert out[:, 5].tolist() == [1.0]


def test_nms_empty_inputs_give_empty_rows():
    out = non_max_suppression(torch.zeros((2, 0, 7)))
    assert [o.shape for o in out] == [(0, 6), (0, 6)]
    (low,) = non_max_suppression(_pred([[50, 50, 20, 20, 0.1, 1.0, 0.0]]))
    assert low.shape == (0, 6)


@pytest.mark.parametrize("kwargs", [{"conf_thres": 1.5}, {"conf_thres": -0.1}, {"iou_thres": 2.0}])
def test_nms_invalid_thresholds_raise(kwargs):
    with pytest.raises(ValueError, match="thres"):
        non_max_suppression(_pred(OVERLAP_SAME), **kwargs)


def test_nms_time_limit_warns_and_stops(caplog):
    with caplog.at_level(logging.WARNING, logger="yolo"):
        out = non_max_suppression(_pred(OVERLAP_SAME, OVERLAP_SAME), time_limit=-1.0)
    assert out[0].shape == (1, 6) and out[1].shape == (0, 6)
    assert "time limit" in caplog.text


def test_nms_apriori_labels_are_added_with_conf_one():
    labels = [torch.tensor([[1.0, 200.0, 200.0, 40.0, 40.0]])]  # cls, xywh
    (out,) = non_max_suppression(_pred(OVERLAP_SAME), labels=labels)
    assert out.shape == (2, 6)
    assert torch.allclose(out[0], torch.tensor([180.0, 180.0, 220.0, 220.0, 1.0, 1.0]))
