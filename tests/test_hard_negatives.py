"""What a reader rejected in the Lesion navigator trains the detector: rejected boxes are hard negatives (their
slices always used, patches drawn on them), slices with undecided detections are left out of a fine-tune."""

from __future__ import annotations

import numpy as np
from test_local_data import drive, phantom
from test_navigator import case  # noqa: F401  (fixture)

from napari_lidnet._training import local_data as ld
from napari_lidnet._training.patches import PatchDataset
from napari_lidnet._widgets._review_decisions import review_decisions
from napari_lidnet._widgets._roles import lidnet_info
from napari_lidnet._widgets.finetune import FineTuneWidget
from napari_lidnet._widgets.layer_inputs import inputs_from_layers
from napari_lidnet.io.dataset import Sample
from napari_lidnet.layer_data import boxes_to_shapes


def test_rejected_slices_are_always_used_and_undecided_ones_left_out() -> None:
    """A long volume simulates every k-th slice only: a slice holding a rejected box is used anyway (it is the
    reader's word that the detector was wrong there), with its box; a slice with an undecided detection is left out,
    even when it would have been used, and the run says so."""
    _, full, boxes = phantom(n=3 * ld.MAX_SIMULATED_SLICES + 2, size=32)
    step = -(-len(full) // ld.MAX_SIMULATED_SLICES)
    rejected = np.array([[77, 3, 4, 9, 12], [49, 3, 4, 9, 12]], np.float32)  # 77: not a multiple of the step (4)
    item = ld.CTInput("vol", full, 2.0, boxes=boxes[boxes[:, 0] == 50], rejected=rejected, undecided=[8, 999])
    messages, samples = drive(ld.iter_samples([item], dose=0.25, seed=1))
    names = [s.name for s in samples]
    assert "vol#77" in names and 77 % step and "vol#8" not in names and 8 % step == 0
    assert item.left_out == [7, 8, 9, 49, 51]  # an undecided box may be a lesion: its neighbours go too
    assert any("slice(s) [7, 8, 9]" in m and "not yet accepted or rejected" in m for m in messages)
    by_name = {s.name: s for s in samples}
    np.testing.assert_allclose(by_name["vol#77"].rejected, rejected[:1, 1:])
    assert "vol#49" not in names and any("1 rejected box(es) lie on those slices" in m for m in messages)
    assert len(by_name["vol#77"].boxes) == 0 and all(len(s.rejected) == 0 for s in samples if s.name != "vol#77")
    info = ld.describe_samples(samples, [item])
    assert info["n_rejected"] == 1 and info["images"][0]["undecided_slices"] == [8]
    pixel = ld.make_samples([item], dose=0.25, seed=1, near_lesion=0)  # boxes do not matter: every slice trains
    assert "vol#8" in [s.name for s in pixel] and item.left_out == []


def test_lesions_only_on_undecided_slices_are_refused_before_anything_runs() -> None:
    """The reader kept two lesions but left a detection undecided on each of their slices: both slices would be left
    out and the run would have no lesion; said at once, pointing to the navigator."""
    _, full, boxes = phantom(n=4, size=64)
    kept = boxes[np.isin(boxes[:, 0], [1])]  # two lesions on slice 1
    item = ld.CTInput("vol", full, 0.7, boxes=kept, box_source="drawn", undecided=[1])
    problems = ld.check_inputs([item], patch_size=32)
    assert len(problems) == 1 and "2 of the 2 lesion boxes" in problems[0] and "Lesion navigator" in problems[0]
    item.undecided = [2]  # next to slice 1: its neighbours go too (an undecided box may be a lesion across slices)
    assert "2 of the 2 lesion boxes lie on or next to" in ld.check_inputs([item], patch_size=32)[0]
    item.undecided = [3]
    assert ld.check_inputs([item], patch_size=32) == []


def test_patches_are_drawn_on_rejected_boxes_and_nothing_else_changes() -> None:
    """With ``hard_fraction`` 1 every patch of a slice without lesions holds its rejected box (marked by the one
    bright pixel there); with 0, or without rejections, the patches are those of the slice alone (same draws)."""
    full = np.zeros((256, 256), np.float32)
    full[200:204, 20:24] = 500.0  # the rejected box's spot, in a corner a 64 px patch mostly misses
    rejected = np.array([[18, 198, 26, 206]], np.float32)
    plain = Sample("s", full, full, np.zeros((0, 4), np.float32), 0.7)
    marked = Sample("s", full, full, np.zeros((0, 4), np.float32), 0.7, rejected)
    hard = PatchDataset([marked], 64, seed=3, repeat=40, hard_fraction=1.0)
    assert all(data_max > 0 for data_max in (hard[i][1].max() for i in range(40)))
    off = PatchDataset([marked], 64, seed=3, repeat=40, hard_fraction=0.0)
    alone = PatchDataset([plain], 64, seed=3, repeat=40, hard_fraction=1.0)
    hits = [alone[i][1].max() > alone[i][1].min() for i in range(40)]
    assert sum(hits) < 20  # random patches mostly miss it
    for i in range(40):
        np.testing.assert_array_equal(off[i][1], alone[i][1])
    # boxes of the patch are lesions only: a rejected box is background, never a target
    assert all(len(hard[i][2]) == 0 for i in range(40))


def test_a_navigator_review_reaches_the_fine_tune_inputs(case, qtbot) -> None:  # noqa: F811
    """Accept one detection, reject one, leave one undecided: the fine-tune inputs (the dock's own gathering) hold
    the kept box as a lesion, the rejected one as a hard negative in the image's pixels, and the undecided slice."""
    viewer, widget, image, boxes, _vol = case
    widget.accept(0)  # slice 1
    widget.reject(1)  # slice 3: [20, 2, 26, 14]
    reviewed = widget.reviewed_layer
    inputs, problems = inputs_from_layers([image], reviewed, None, viewer.layers)
    assert problems == []
    item = inputs[0]
    np.testing.assert_allclose(item.boxes, [[1, 4, 6, 14, 11]], atol=1e-4)
    np.testing.assert_allclose(item.rejected, [[3, 20, 2, 26, 14]], atol=1e-4)
    assert item.undecided == [2]
    viewer.layers.remove(boxes)  # the detections deleted: their undecided box as it stood at the last decision
    _, undecided = review_decisions(reviewed, image, viewer.layers)
    assert undecided == [2]
    viewer.layers.append(boxes)
    widget.load(boxes, image)
    widget.reject(2)  # every detection decided: nothing left out
    inputs, _ = inputs_from_layers([image], widget.reviewed_layer, None, viewer.layers)
    assert inputs[0].undecided == [] and len(inputs[0].rejected) == 2

    dock = FineTuneWidget(viewer)
    qtbot.addWidget(dock)
    gathered, problems = dock._layer_inputs([image.name], reviewed.name)
    assert len(gathered[0].rejected) == 2 and gathered[0].undecided == []


def test_only_the_reviewed_boxes_layer_counts_and_lines_are_no_detections(case) -> None:  # noqa: F811
    """An older detection run of the image, never reviewed, does not hold slices back (the navigator shows nothing
    pending); a line drawn on the reviewed detections is no box to decide; a scan's own annotations reviewed in the
    navigator leave their pending boxes' slices out as detections do."""
    viewer, widget, image, boxes, _vol = case
    for fid in range(3):
        widget.accept(fid) if fid == 0 else widget.reject(fid)
    older = viewer.add_shapes(boxes_to_shapes(np.array([[0, 2, 2, 8, 8]], float), 3), shape_type="rectangle",
                              name="older run", scale=image.scale, translate=image.translate,
                              metadata={"lidnet_role": "detections", "lidnet": {"source_layer": image.name}})
    boxes.add_lines([[4, 2, 2], [4, 10, 12]])
    _, undecided = review_decisions(widget.reviewed_layer, image, viewer.layers)
    assert undecided == [] and len(older.data) == 1
    annotated = viewer.add_shapes(boxes_to_shapes(np.array([[0, 2, 2, 8, 8], [3, 4, 4, 9, 9]], float), 3),
                                  shape_type="rectangle", name=f"{image.name} lesions (annotated)",
                                  scale=image.scale, translate=image.translate,
                                  metadata={"lidnet_role": "annotations", "lidnet": {"source_layer": image.name}})
    widget.load(annotated, image)
    widget.accept(widget.row_ids()[0])  # slice 0 kept, slice 3 left pending
    _, undecided = review_decisions(widget.reviewed_layer, image, viewer.layers)
    assert undecided == [3]


def test_a_kept_box_moved_to_another_slice_still_decides_its_detection(case) -> None:  # noqa: F811
    """The reader keeps a detection and drags the kept box to the next slice (where the lesion shows best): the
    detection's own slice is decided (not left out as undecided), and the kept box trains where it now is."""
    viewer, widget, image, _boxes, _vol = case
    widget.accept(0)  # the detection on slice 1
    widget.reject(1)
    reviewed = widget.reviewed_layer
    data = [np.array(v, float) for v in reviewed.data]
    data[0][:, 0] += 1  # slice 1 -> 2
    reviewed.data = data
    entry = lidnet_info(reviewed)["kept"][0]
    assert entry[0] == 2 and entry[9] == 1
    inputs, problems = inputs_from_layers([image], reviewed, None, viewer.layers)
    assert problems == []
    assert inputs[0].undecided == [2]  # slice 2's own detection is still pending; slice 1 is decided
    np.testing.assert_allclose(inputs[0].boxes[:, 0], [2])
