"""Output guards: export --onnx, cam --out and report DIR refuse an input or an existing file
of another kind with one line and exit 2, leaving every file byte-identical."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI = "import sys; from effscale.cli.main import main; sys.exit(main())"


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


def cli(*argv):
    proc = subprocess.run([sys.executable, "-c", CLI, *map(str, argv)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    return proc.returncode, proc.stderr


def refused(argv, roots, words):
    before = hashes(*roots)
    code, err = cli(*argv)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert all(w in err for w in words), err
    assert hashes(*roots) == before


def test_export_refuses_inputs_and_other_kinds(run_dir, tmp_path):
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


def test_cam_refuses_inputs_and_other_kinds(run_dir, tmp_path):
    note = tmp_path / "something.json"
    note.write_text('{"keep": 1}')
    png_named = tmp_path / "state.png"
    png_named.write_bytes((run_dir / "state.pt").read_bytes()[:4096])
    cases = [(note, ["JSON"]), (run_dir / "best.safetensors", ["inputs"]), (run_dir, ["inputs"]),
             (png_named, ["zip"])]
    for target, words in cases:
        refused(["cam", run_dir, "--out", target], [run_dir, tmp_path], words)


def test_report_refuses_a_report_of_another_kind(tmp_path):
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
