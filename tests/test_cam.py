"""Class activation maps: localisation where the answer is known (two tasks of different kinds),
the evidence-based layer choice, boxes mapped through the eval transform, deletion, insertion
and peak tests, figures and the CLI's bad-input handling."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FASHION_DIR
from effscale import create_model
from effscale.data import DatasetInfo, load_data
from effscale.explain.cam import (CamResult, LayerChoice, balanced_order, cam, compare_figure,
                                  load_boxes, localise, map_box)
from effscale.explain.faithfulness import (curve_auc, deletion_curves, insertion_curves,
                                           peak_window_scores)
from effscale.explain.gradcam import quiet_progress
from effscale.explain.layers import candidate_layers, choose_layer, layer_sizes
from effscale.io.checkpoint import model_meta, save_model_file

# --- the two localisation tasks, shared with benchmarks/cam_localisation.py ---
# squares (synthetic): the class is the colour of a 6-px square on a grey 32-px canvas;
# fashion (real image content): a Fashion-MNIST item at a random place on a dark canvas.


def _benchmark_module(name: str):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"effscale_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TASKS = _benchmark_module("cam_localisation")
CANVAS = TASKS.CANVAS
BOXES_MODEL = TASKS.SMALL_MODEL  # maps 32, 16, 8, 4, 4, 2, 2, 2 (stem stride 1)
# The targets of the layer choice, on every task with known boxes: auto's peak-in-box rate is
# within AUTO_SLACK of the best single stage's and at least AUTO_FLOOR.
AUTO_SLACK, AUTO_FLOOR = TASKS.SLACK, TASKS.FLOOR


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine, two OpenMP threads spin-wait on each
    other whenever another process holds a core, and steps get ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def hit_rate(maps: np.ndarray, boxes) -> float:
    """Fraction of maps whose peak lies in the box."""
    return localise(maps, boxes).rate


def save(model, path: Path, info: DatasetInfo) -> Path:
    save_model_file(path, model, model_meta(
        model, dataset=info.name, class_names=list(info.class_names), mean=list(info.mean),
        std=list(info.std)))
    return path


@pytest.fixture(scope="module")
def boxes_run(tmp_path_factory):
    """The squares task's model, saved as a model file; its Data (ImageNet's normalisation, as
    image folders use: the same model is run on a folder below) and the validation boxes
    keyed by index, as an (N, 4) array too."""
    model, data, square_boxes = TASKS.squares_task(seed=0, val_images=64)
    path = save(model, tmp_path_factory.mktemp("boxes") / "boxes.safetensors", data.info)
    array = np.array([square_boxes[str(i)] for i in range(len(square_boxes))], np.float64)
    return path, data, array, square_boxes


@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory):
    if not Path(FASHION_DIR).is_dir():
        pytest.skip("Fashion-MNIST not installed")
    model, data, val_boxes = TASKS.fashion_task(seed=0, val_images=96)
    path = save(model, tmp_path_factory.mktemp("fashion") / "fashion.safetensors", data.info)
    return path, data, val_boxes


def stage_rates(path, data, box_dict, images=None) -> tuple[dict, CamResult]:
    """Peak-in-box rate of each candidate stage, and auto's result, on the same images."""
    rates = {}
    for index in candidate_layers(create_model(BOXES_MODEL, stem_stride=1)):
        result = cam(path, data, images=images, layer=str(index + 1), boxes=box_dict)
        rates[result.layer.name] = result.localisation.rate
    return rates, cam(path, data, images=images, layer="auto", boxes=box_dict)


def check_auto(rates: dict, auto: CamResult) -> None:
    best = max(rates.values())
    got = auto.localisation.rate
    assert auto.layer.auto and auto.layer.scores
    assert got >= best - AUTO_SLACK and got >= AUTO_FLOOR, (
        f"auto chose {auto.layer} ({got:.2f}); stages: {rates}; {auto.layer.reason}")


def test_auto_layer_localises_on_the_squares(boxes_run):
    """Fails when auto picks by map size: the deepest >= 4x4 map (stage 5) of this model puts
    its peak on the square in a few % of images, the best stages in ~90%."""
    path, data, _, square_boxes = boxes_run
    rates, auto = stage_rates(path, data, square_boxes)
    assert auto.correct.mean() >= 0.9, "the model did not learn the task"
    check_auto(rates, auto)
    assert rates["stage 5"] < 0.3  # the size rule's pick: the test would catch it


def test_auto_layer_localises_on_fashion_items(fashion_run):
    path, data, val_boxes = fashion_run
    rates, auto = stage_rates(path, data, val_boxes)
    assert auto.correct.mean() >= 0.8, "the model did not learn the task"
    check_auto(rates, auto)
    assert auto.localisation.chance < 0.5  # the boxes leave room to miss


def test_localisation_peak_inside_the_object(boxes_run, tmp_path):
    path, data, box_array, _ = boxes_run
    result = cam(path, data, images=64, method="gradcam", out=tmp_path / "boxes.png")
    assert isinstance(result, CamResult)
    assert result.correct.mean() >= 0.9, "the model did not learn the task"
    assert result.maps.shape == (64, CANVAS, CANVAS) and result.maps.dtype == np.float32
    assert result.maps.min() >= 0 and result.maps.max() <= 1
    assert result.images.shape == (64, CANVAS, CANVAS, 3)
    # the images are class-balanced, not the first 64: compare with their own squares
    assert hit_rate(result.maps, box_array[result.indices]) >= 0.7
    # the bar is one that maps without information fail
    uniform = np.ones_like(result.maps)
    noise = np.random.default_rng(0).random(result.maps.shape)
    assert hit_rate(uniform, box_array) < 0.3
    assert hit_rate(noise, box_array) < 0.3
    assert (tmp_path / "boxes.png").stat().st_size > 10_000


@pytest.mark.parametrize("method", ["gradcam++", "layercam", "eigencam"])
def test_other_methods_localise(boxes_run, method):
    path, data, box_array, _ = boxes_run
    result = cam(path, data, images=32, method=method)
    assert result.layer.auto
    assert hit_rate(result.maps, box_array[result.indices]) >= 0.6


def test_deletion_score_beats_random_maps(boxes_run):
    path, data, _, _ = boxes_run
    result = cam(path, data, images=32, layer="3", score=True)
    score = result.deletion
    assert score.cam_curve.shape == (11,) and score.per_image.shape == (32,)
    assert score.cam_auc < score.random_auc - 0.1
    assert score.ratio < 1


class LeftHalf(torch.nn.Module):
    """Class-1 logit = scale x the mean of the image's two leftmost columns."""

    def __init__(self, scale: float = 10.0):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        s = x[:, :, :, :2].mean((1, 2, 3))
        return torch.stack([torch.zeros_like(s), self.scale * s], 1)


def test_deletion_curve_by_hand():
    """Deleting left pixels first kills LeftHalf's class-1 score, deleting right ones does not."""
    x = torch.ones(1, 1, 4, 4)
    left = np.zeros((1, 4, 4), np.float32)
    left[..., :2] = 1
    by_left = deletion_curves(LeftHalf(), x, left, [1], steps=2)
    by_right = deletion_curves(LeftHalf(), x, 1 - left, [1], steps=2)
    assert by_left[0, 0] == pytest.approx(by_right[0, 0])
    assert by_left[0, 1] == pytest.approx(0.5)  # left half gone: logits equal
    assert by_right[0, 1] == pytest.approx(by_right[0, 0])
    assert curve_auc(by_left)[0] < curve_auc(by_right)[0]


def test_insertion_and_peak_tests_by_hand():
    """Putting the left half back first restores LeftHalf's class-1 score at once, the right
    half first leaves it at the blurred image's value; a peak on the left beats one on the
    right."""
    x = torch.zeros(1, 1, 8, 8)
    x[..., :2] = 1  # the blur spreads the two bright columns: the start is below the end
    left = np.zeros((1, 8, 8), np.float32)
    left[..., :4] = 1
    model = LeftHalf(scale=2.0)  # unsaturated probabilities
    by_left = insertion_curves(model, x, left, [1], steps=2)
    by_right = insertion_curves(model, x, 1 - left, [1], steps=2)
    assert by_left[0, 0] < by_left[0, 2] - 0.02
    assert by_left[0, 0] == pytest.approx(by_right[0, 0])  # both start from the blur
    assert by_left[0, 1] == pytest.approx(by_left[0, 2])  # left half back = the whole image
    assert by_right[0, 1] == pytest.approx(by_right[0, 0])  # the right half changes nothing
    assert curve_auc(by_left)[0] > curve_auc(by_right)[0]
    peak_left = np.zeros((1, 8, 8), np.float32)
    peak_left[0, 4, 1] = 1
    peak_right = np.zeros((1, 8, 8), np.float32)
    peak_right[0, 4, 6] = 1
    on, off = (peak_window_scores(model, x, m, [1], windows=(0.25, 0.5))[0]
               for m in (peak_left, peak_right))
    assert on > off + 0.01
    assert off == pytest.approx(by_right[0, 0])  # a window far from the columns: the blur


# --- layer choice ---

def test_candidates_are_the_maps_that_can_localise():
    assert candidate_layers(create_model("b0")) == list(range(8))  # 112 .. 7 at 224 px
    assert candidate_layers(create_model("b0@res=32")) == [0, 1, 2]  # 16, 8, 4; then 2 and 1
    with pytest.warns(UserWarning, match="upsample") as record:
        assert candidate_layers(create_model("b0@res=32"), resolution=4) == [0]
    assert "stem_stride=1" in str(record[0].message)


def test_auto_needs_images_and_says_why(boxes_run):
    path, data, _, _ = boxes_run
    model = create_model(BOXES_MODEL, 3, stem_stride=1)
    with pytest.raises(ValueError, match="measures the candidate layers on images"):
        choose_layer(model)
    result = cam(path, data, images=4)
    choice = result.layer
    assert isinstance(choice, LayerChoice) and choice.auto
    assert "peak test" in choice.reason and "64 images" in choice.reason
    assert len(choice.scores) == 5  # stages 1-5 are >= 4x4
    # the two best-scored layers are the ones averaged, the best first
    assert len(choice.layers) == 2
    assert choice.label == " + ".join(name for name, _ in choice.scores[:2])
    values = [v for _, v in choice.scores]
    assert values == sorted(values, reverse=True)
    # the map is the mean of the two layers' own maps, rescaled to [0, 1]
    alone = [cam(path, data, images=4, layer=str(i + 1)).maps for i in choice.layers]
    mean = (alone[0] + alone[1]) / 2
    low = mean.min(axis=(1, 2), keepdims=True)
    high = mean.max(axis=(1, 2), keepdims=True)
    assert np.allclose(result.maps, (mean - low) / (high - low), atol=1e-4)


def test_layer_maps_follow_the_order_asked_for(boxes_run):
    """pytorch-grad-cam collects activations in the order the layers run: maps asked for in
    another order (auto's fusion names the best layer first) must still belong to their layer."""
    from effscale.explain.gradcam import layer_maps
    from effscale.io.checkpoint import load_model_file
    path, data, _, _ = boxes_run
    model, _ = load_model_file(path)
    result = cam(model, data, images=8, layer="1")
    forward, _ = layer_maps(model, result.inputs, result.targets, layers=[0, 2])
    backward, _ = layer_maps(model, result.inputs, result.targets, layers=[2, 0])
    assert np.array_equal(forward[:, ::-1], backward)
    assert np.allclose(forward[:, 0], result.maps)


def test_maps_are_upsampled_over_the_pixels_their_features_are_centred_on():
    """Feature i of a stride-s map sits over input pixel s*i (odd kernels, (k-1)//2 padding):
    pixel s*i takes feature i's value exactly, pixels between take the linear mix, and beyond
    the last feature its value holds. pytorch-grad-cam's resize would shift all of it by
    (s-1)/2 pixels."""
    from effscale.explain.gradcam import layer_strides, upsample_aligned
    assert layer_strides(create_model("b0")) == [2, 4, 8, 16, 16, 32, 32, 32]
    assert layer_strides(create_model("b0", stem_stride=1))[:2] == [1, 2]
    cams = np.array([[[0.0, 4.0], [8.0, 12.0]]], np.float32)  # 2x2, stride 4 -> 8x8
    out = upsample_aligned(cams, 4, 8, 8)[0]
    assert out[0, 0] == 0 and out[0, 4] == 4 and out[4, 0] == 8 and out[4, 4] == 12
    assert out[0, 2] == pytest.approx(2) and out[2, 2] == pytest.approx(6)
    assert out[0, 7] == pytest.approx(4) and out[7, 7] == pytest.approx(12)  # the edge holds


def test_explicit_layers():
    model = create_model("b0@res=64", num_classes=10)
    with pytest.warns(UserWarning, match="cannot localise"):
        assert choose_layer(model, "head").index == 7  # 2x2 at 64 px
    assert choose_layer(model, "5").module == "stages.4"
    assert choose_layer(model, "stage 2").size == 16
    assert choose_layer(model, "3").reason == "asked for"
    with pytest.warns(UserWarning, match="cannot localise"):
        assert choose_layer(model, 7).size == 2
    for bad in ("0", "8", "tail", ""):
        with pytest.raises(ValueError, match="layer must be"):
            choose_layer(model, bad)
    assert layer_sizes(model) == [32, 16, 8, 4, 4, 2, 2, 2]


# --- boxes ---

def test_map_box_by_hand():
    # image folder, 64x64 source at 64 px: resize to 73x73 (round(64 / 0.875)), crop offset
    # round(4.5) = 4 (half to even, as torchvision), scale 73/64
    s = 73 / 64
    assert map_box([10, 20, 50, 60], (64, 64), 64, crop_fraction=0.875) == pytest.approx(
        (10 * s - 4, 20 * s - 4, 50 * s - 4, 64))  # y1 = 68.4 - 4 is clipped to 64
    # landscape 200x100 at 32 px: short side 37, long int(37 * 2) = 74; top round(2.5) = 2,
    # left round(21) = 21; scale 0.37 both ways
    assert map_box([100, 50, 120, 70], (200, 100), 32, crop_fraction=0.875) == pytest.approx(
        (100 * 0.37 - 21, 50 * 0.37 - 2, 120 * 0.37 - 21, 70 * 0.37 - 2))
    # portrait 90x160 at 64 px: 73 x int(73 * 160 / 90) = 129; left round(4.5) = 4, top
    # round(32.5) = 32; the whole image is the whole input, and a box in the cropped-off top
    # is gone
    assert map_box([0, 0, 90, 160], (90, 160), 64, crop_fraction=0.875) == (0, 0, 64, 64)
    assert map_box([45, 10, 60, 30], (90, 160), 64, crop_fraction=0.875) is None
    assert map_box([45, 50, 60, 70], (90, 160), 64, crop_fraction=0.875) == pytest.approx(
        (45 * 73 / 90 - 4, 50 * 129 / 160 - 32, 60 * 73 / 90 - 4, 70 * 129 / 160 - 32))
    # in-memory datasets: a plain resize, 28 -> 32 and a non-square 40x20 -> 32
    assert map_box([7, 7, 21, 21], (28, 28), 32) == pytest.approx((8, 8, 24, 24))
    assert map_box([10, 5, 30, 15], (40, 20), 32) == pytest.approx((8, 8, 24, 24))


@pytest.mark.parametrize("size,resolution", [((120, 80), 48), ((70, 150), 32), ((64, 64), 64)])
def test_map_box_follows_the_folder_eval_transform(size, resolution):
    """A white box painted on a black image lands where map_box says, after the real eval
    transform (up to the resampling's blur at its edges)."""
    from effscale.data.augment import NO_AUGMENT
    from effscale.data.folder import EVAL_CROP_FRACTION, folder_transform
    width, height = size
    box = [width // 4, height // 3, width // 4 + width // 3, height // 3 + height // 4]
    image = np.zeros((height, width, 3), np.uint8)
    image[box[1]:box[3], box[0]:box[2]] = 255
    out = folder_transform(resolution, False, NO_AUGMENT)(Image.fromarray(image))[0].numpy()
    ys, xs = np.nonzero(out > 127)
    seen = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    mapped = map_box(box, size, resolution, crop_fraction=EVAL_CROP_FRACTION)
    assert mapped == pytest.approx(seen, abs=1.0)


def test_localise_peak_and_energy():
    maps = np.zeros((3, 4, 4), np.float32)
    maps[0, 1, 2] = 1  # peak at x=2, y=1
    maps[1, 3, 3] = 1
    boxes = np.array([[2, 1, 3, 2], [0, 0, 2, 2], [0, 0, 4, 4]], float)
    loc = localise(maps, boxes)
    assert loc.peak_in_box.tolist() == [True, False, False]  # a flat map has no peak
    assert loc.energy.tolist() == pytest.approx([1.0, 0.0, 0.0])
    assert loc.area.tolist() == pytest.approx([1 / 16, 4 / 16, 1.0])
    half = localise(np.ones((1, 4, 4)) + np.eye(4)[None], [[0, 0, 2, 4]])
    assert half.energy[0] == pytest.approx(0.5)  # half the mass, the left half of the pixels


def test_load_boxes_rejects_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such boxes file"):
        load_boxes(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    for text, expected in [("{'a': [1, 2, 3, 4]}", "not valid JSON"),
                           ("[[1, 2, 3, 4]]", "JSON object"),
                           ('{"a": [1, 2, 3]}', "four numbers"),
                           ('{"a": [5, 2, 3, 4]}', "x0 < x1"),
                           ('{"a": [-1, 0, 3, 4]}', "0 <= x0")]:
        bad.write_text(text)
        with pytest.raises(ValueError, match=expected):
            load_boxes(bad)
    assert load_boxes({3: [0, 1, 2, 3]}) == {"3": (0.0, 1.0, 2.0, 3.0)}


def test_boxes_through_the_api(boxes_run):
    """Only boxed images are explained; the rates match the maps and mapped boxes."""
    path, data, box_array, square_boxes = boxes_run
    some = {k: v for k, v in square_boxes.items() if int(k) % 2 == 0}
    result = cam(path, data, images=None, layer="2", boxes=some)
    assert sorted(result.indices.tolist()) == sorted(int(k) for k in some)
    loc = result.localisation
    assert len(loc.boxes) == len(some) == len(result.maps)
    for i, index in enumerate(result.indices):
        assert loc.boxes[i].tolist() == pytest.approx(some[str(index)])  # 32 px in, 32 px seen
    assert loc.rate == pytest.approx(localise(result.maps, loc.boxes).rate)
    assert 0 < loc.chance < 0.2 and 0 <= loc.energy_rate <= 1  # 12x12 of 32x32
    assert {"peak_in_box", "energy_in_box"} <= set(result.rows()[0])
    with pytest.raises(ValueError, match="none of the 2 boxes names an image"):
        cam(path, data, boxes={"999": [0, 0, 1, 1], "x.png": [0, 0, 1, 1]})
    with pytest.raises(ValueError, match="lies outside its 32x32 image"):
        cam(path, data, boxes={"0": [0, 0, 33, 10]})


# --- images, figures, progress bars ---

def test_balanced_order():
    labels = np.array([0] * 10 + [1] * 10 + [2] * 3)
    order = balanced_order(labels, seed=0)
    assert sorted(order.tolist()) == list(range(23))
    assert labels[order[:9]].tolist() == [0, 1, 2] * 3
    assert labels[order[9:]].tolist() == [0, 1] * 7
    assert not np.array_equal(order, balanced_order(labels, seed=1))
    assert np.array_equal(order, balanced_order(labels, seed=0))


def test_figure_says_which_layer_and_why(boxes_run, tmp_path):
    from effscale.explain.figures import result_title, short_reason
    path, data, _, square_boxes = boxes_run
    result = cam(path, data, images=8, boxes=square_boxes, out=tmp_path / "grid.png")
    title = result_title(result).replace("\n", " ")  # wrapped at SUPTITLE_CHARS
    assert str(result.layer) in title and "auto: mean of the 2 best of 5" in title
    assert "peak in box" in title
    assert short_reason(result.layer) == "auto: 2 best of 5 by peak test"
    assert (tmp_path / "grid.png").stat().st_size > 10_000
    explicit = cam(path, data, images=2, layer="3")
    assert "stage 3 (8x8 map), asked for" in result_title(explicit)


def test_quiet_progress_silences_scorecam(boxes_run, capfd):
    import pytorch_grad_cam.score_cam as score_cam
    path, data, _, _ = boxes_run
    before = score_cam.tqdm
    result = cam(path, data, images=2, method="scorecam", layer="3", batch_size=32)
    assert result.maps.shape == (2, CANVAS, CANVAS)
    _, err = capfd.readouterr()
    assert "it/s" not in err and "%|" not in err
    assert score_cam.tqdm is before  # restored
    with quiet_progress():
        assert score_cam.tqdm is not before
    assert score_cam.tqdm is before


# --- end to end on a real dataset, CLI, comparison figure ---

@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory):
    """Untrained digits checkpoints at two resolutions (maps are not judged here)."""
    info = load_data("digits").info
    root = tmp_path_factory.mktemp("digits")
    paths = []
    for name in ("b0@w=0.25,d=0.25,res=32", "b0@w=0.25,d=0.25,res=48"):
        model = create_model(name, info.num_classes, in_chans=1, stem_stride=1)
        ema = create_model(name, info.num_classes, in_chans=1, stem_stride=1)
        path = root / f"{name.split('res=')[1]}.safetensors"
        save_model_file(path, model, model_meta(model, dataset="digits",
                                                class_names=list(info.class_names),
                                                mean=list(info.mean), std=list(info.std)),
                        ema=ema)
        paths.append(path)
    return paths


def test_cli_grid_and_score(digits_runs, run_cli, tmp_path):
    out = tmp_path / "cams.png"
    code, stdout, err = run_cli("cam", digits_runs[0], "--images", 4, "--score", "--out", out)
    assert code == 0, err
    assert "stage" in stdout and "deletion_auc" in stdout and "random_auc" in stdout
    assert "ema weights" in stdout and "auto: mean of the 2 best" in stdout
    assert out.stat().st_size > 5_000


def test_cli_images_are_class_balanced(digits_runs, run_cli, tmp_path):
    code, stdout, err = run_cli("cam", digits_runs[0], "--images", 10, "--layer", "2",
                                "--format", "json", "--out", tmp_path / "c.png")
    assert code == 0, err
    rows = json.loads(stdout[stdout.index("["):stdout.rindex("]") + 1])
    assert sorted(r["true"] for r in rows) == [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def squares_folder(boxes_run, tmp_path_factory):
    """The squares' validation images as an image folder of PNGs, with boxes.json keyed the way
    benchmarks/make_folder.py writes it."""
    _, data, _, square_boxes = boxes_run
    root = tmp_path_factory.mktemp("squares_folder")
    # folders sort by name: number them so that the folder's class indices are the model's
    folder = [f"{k}-{name}" for k, name in enumerate(data.info.class_names)]
    train = [int(np.flatnonzero(data.train.labels.numpy() == k)[0]) for k in range(3)]
    found = {}
    for split, tensors, indices in (("train", data.train, train),
                                    ("val", data.val, range(len(data.val)))):
        for i in indices:
            relative = f"{split}/{folder[int(tensors.labels[i])]}/{i:03d}.png"
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(tensors.images[i].permute(1, 2, 0).numpy()).save(root / relative)
            if split == "val":
                found[relative] = square_boxes[str(i)]
    (root / "boxes.json").write_text(json.dumps(found))
    return root


def test_cli_boxes_on_an_image_folder(boxes_run, squares_folder, run_cli, tmp_path):
    """The folder's eval transform resizes 32 -> 37 px and crops 32: the boxes follow, and the
    trained model's auto layer still finds the squares."""
    code, stdout, err = run_cli("cam", boxes_run[0], "--data", f"imagefolder:{squares_folder}",
                                "--boxes", squares_folder / "boxes.json", "--format", "json",
                                "--out", tmp_path / "f.png")
    assert code == 0, err
    summary = json.loads(stdout[stdout.rindex("["):stdout.rindex("]") + 1])[0]
    assert summary["peak_in_box"] >= 0.7 and summary["random_peak"] < 0.2
    assert (tmp_path / "f.png").stat().st_size > 10_000


def test_cli_bad_boxes_are_one_line(digits_runs, run_cli, tmp_path):
    malformed = tmp_path / "malformed.json"
    malformed.write_text('{"0": [0, 0, 4, 4],}')
    outside = tmp_path / "outside.json"
    outside.write_text('{"0": [0, 0, 9, 4]}')  # digits are 8x8
    nothing = tmp_path / "nothing.json"
    nothing.write_text('{"val/x/1.png": [0, 0, 4, 4]}')
    cases = [
        ((digits_runs[0], "--boxes", tmp_path / "missing.json"), "no such boxes file"),
        ((digits_runs[0], "--boxes", malformed), "is not valid JSON"),
        ((digits_runs[0], "--boxes", outside), "lies outside its 8x8 image"),
        ((digits_runs[0], "--boxes", nothing), "none of the 1 boxes names an image"),
        ((digits_runs[0], "--images", "none"), "--images must be"),
    ]
    for argv, expected in cases:
        code, _, err = run_cli("cam", *argv, "--out", tmp_path / "x.png")
        assert code == 2, argv
        assert len(err.strip().splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "x.png").exists()


def test_compare_figure_models_of_different_resolutions(digits_runs, tmp_path):
    out = tmp_path / "compare.png"
    results = compare_figure(digits_runs, "digits", out, images=3, labels=["small", "large"])
    assert [r.maps.shape for r in results] == [(3, 32, 32), (3, 48, 48)]
    assert np.array_equal(results[0].labels, results[1].labels)
    assert all(r.layer.auto for r in results)
    assert out.stat().st_size > 5_000


def test_cli_compare(digits_runs, run_cli, tmp_path):
    out = tmp_path / "cmp.png"
    # a pinned layer: auto's measurement (tested above) would run EigenCAM on 128 images
    code, stdout, err = run_cli("cam", digits_runs[0], "--compare", digits_runs[1], "--images",
                                2, "--method", "eigencam", "--layer", 3, "--out", out)
    assert code == 0, err
    assert out.exists() and "32.safetensors" in stdout and "48.safetensors" in stdout


def test_cli_bad_input_is_one_line(digits_runs, run_cli, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    cases = [
        (("cam", text, "--data", "digits"), "not an effscale checkpoint"),
        (("cam", digits_runs[0], "--target", "10"), "out of range"),
        (("cam", digits_runs[0], "--method", "fancycam"), "unknown CAM method"),
        (("cam", digits_runs[0], "--layer", "9"), "layer must be"),
        (("cam", tmp_path / "missing.safetensors"), "no such checkpoint"),
    ]
    for argv, expected in cases:
        code, _, err = run_cli(*argv, "--out", tmp_path / "x.png")
        assert code == 2, argv
        assert len(err.strip().splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "x.png").exists()
