"""Output guards: export --onnx, cam --out and report DIR refuse an input or an existing file
of another kind with one line and exit 2, leaving every file byte-identical."""

import hashlib

import pytest


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    import effscale
    out = tmp_path_factory.mktemp("guards") / "run"
    effscale.train(model="b0@phi=-6,r=0.1652", data="digits", stem_stride=1, epochs=1,
                   subset=160, val_subset=80, out=str(out), quiet=True)
    return out


def hashes(*roots):
    found = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        found.update({p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files})
    return found


@pytest.fixture
def refused(run_cli):
    """refused(argv, roots, words): the command exits 2 with one line holding every word,
    and leaves every file under roots byte-identical (in-process: a subprocess per case cost
    ~5 s of imports each)."""
    def check(argv, roots, words):
        before = hashes(*roots)
        code, _, err = run_cli(*argv)
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert all(w in err for w in words), err
        assert hashes(*roots) == before
    return check


def test_export_refuses_inputs_and_other_kinds(run_dir, tmp_path, refused):
    other = tmp_path / "x.safetensors"
    other.write_bytes((run_dir / "best.safetensors").read_bytes()[:4096])
    json_file = tmp_path / "model.onnx"
    json_file.write_text('{"not": "onnx"}')
    cases = [(run_dir / "best.safetensors", ["inputs"]), (run_dir, ["inputs"]),
             (other, ["safetensors"]), (json_file, ["JSON"]), (tmp_path, ["directory"])]
    for target, words in cases:
        refused(["export", run_dir, "--onnx", target], [run_dir, tmp_path], words)
    refused(["export", run_dir / "best.safetensors", "--onnx", run_dir / "best.safetensors"],
            [run_dir], ["inputs"])


def test_cam_refuses_inputs_and_other_kinds(run_dir, tmp_path, refused):
    note = tmp_path / "something.json"
    note.write_text('{"keep": 1}')
    png_named = tmp_path / "state.png"
    png_named.write_bytes((run_dir / "state.pt").read_bytes()[:4096])
    cases = [(note, ["JSON"]), (run_dir / "best.safetensors", ["inputs"]), (run_dir, ["inputs"]),
             (png_named, ["zip"])]
    for target, words in cases:
        refused(["cam", run_dir, "--out", target], [run_dir, tmp_path], words)


def test_report_refuses_a_report_of_another_kind(tmp_path, refused):
    study = tmp_path / "study"
    study.mkdir()
    (study / "study.json").write_text("{}")
    (study / "report.html").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    refused(["report", study], [study], ["report.html", "PNG"])
    (study / "report.html").unlink()
    (study / "report.md").mkdir()
    refused(["report", study], [study], ["directory"])
    refused(["report", study / "study.json"], [study], ["is a file"])


def test_an_old_output_of_the_same_kind_is_no_reason_to_refuse(tmp_path):
    from effscale.io.files import check_output
    old = tmp_path / "cams.png"
    old.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    check_output(old, suffixes=(".png",), kinds=("PNG",), inputs=[tmp_path / "x"], flag="--out")
    empty = tmp_path / "m.onnx"
    empty.write_bytes(b"")
    check_output(empty, suffixes=(".onnx",), kinds=(None,), flag="--onnx")
