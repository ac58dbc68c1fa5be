"""Disk full and other OS errors: one line naming the path and the cause, exit 2, nothing lost."""

import errno
import hashlib
import os
import pathlib

import pytest

import effscale.io.checkpoint as checkpoint
import effscale.io.files as files

TINY = ("--data", "digits", "--model", "b0@phi=-6,r=0.1652", "--stem-stride", 1, "--epochs", 2,
        "--subset", 160, "--val-subset", 80, "--device", "cpu", "--quiet")


def hashes(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(pathlib.Path(directory).iterdir())
            if p.is_file() and not p.name.startswith(".")}  # not the lock, not temporaries


def one_line(err):
    """The error line: the last on stderr (progress lines may come before it), the only one."""
    lines = [line for line in err.strip().splitlines() if line.startswith("effscale:")]
    assert "Traceback" not in err and len(lines) == 1, err
    assert err.strip().splitlines()[-1] == lines[0], err
    return lines[0]


def _fail_second(monkeypatch, out, make_error, module, name):
    """Replace module.name (a writer called as f(..., tmp) ) so that the second write of
    last.safetensors records the run directory's hashes, then raises make_error()."""
    real, calls, before = getattr(module, name), [], {}

    def writer(*args, **kwargs):
        target = str(args[1])
        if "last.safetensors" in target:
            calls.append(target)
            if len(calls) == 2:
                before.update(hashes(out))
                raise make_error()
        return real(*args, **kwargs)
    monkeypatch.setattr(module, name, writer)
    return before


@pytest.mark.parametrize("kind", ["safetensors", "oserror"])
def test_disk_full_mid_run_loses_nothing_and_resumes(tmp_path, run_cli, monkeypatch, one_thread,
                                                     kind):
    from safetensors import SafetensorError
    out = tmp_path / "run"
    if kind == "safetensors":  # how safetensors reports ENOSPC: its own exception
        error = lambda: SafetensorError('Error while serializing: IoError(Os { code: 28, kind: '
                                        'StorageFull, message: "No space left on device" })')
    else:
        error = lambda: OSError(errno.ENOSPC, "No space left on device")
    before = _fail_second(monkeypatch, out, error, checkpoint, "save_file")
    code, _, err = run_cli("train", *TINY, "--out", out)
    line = one_line(err)
    assert code == 2 and "No space left on device (errno 28)" in line
    assert f"cannot write {out / 'last.safetensors'}" in line and "--resume" in line
    assert before and hashes(out) == before  # the last good checkpoint, byte for byte
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
    monkeypatch.undo()
    code, _, err = run_cli("train", *TINY, "--out", out, "--resume")
    assert code == 0, err
    assert len((out / "metrics.csv").read_text().strip().splitlines()) == 3  # header + 2 epochs


def test_torch_save_write_failure_on_a_full_disk_is_enospc(tmp_path, monkeypatch):
    def write(tmp):
        pathlib.Path(tmp).write_bytes(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0 "
                           "PytorchStreamWriter failed writing file data/0: file write failed")
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: os.statvfs_result((0,) * 10) and
                        type("U", (), {"free": 0})())
    with pytest.raises(OSError) as caught:
        files.atomic_write(tmp_path / "state.pt", write)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "state.pt")
    assert os.listdir(tmp_path) == []


def test_unwritable_out_is_one_line(tmp_path, run_cli, monkeypatch):
    readonly = tmp_path / "ro"
    readonly.mkdir(mode=0o500)  # root ignores the bits: refuse as the kernel would for a user
    real_mkdir = pathlib.Path.mkdir

    def mkdir(self, *args, **kwargs):
        if readonly in self.parents and not self.exists():
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *args, **kwargs)
    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    code, out, err = run_cli("train", *TINY, "--out", readonly / "run")
    line = one_line(err)
    assert code == 2 and f"{readonly / 'run'}" in line and "Permission denied (errno 13)" in line


def test_file_where_the_run_directory_should_be(tmp_path, run_cli):
    (tmp_path / "some_file").write_text("x")
    code, out, err = run_cli("train", *TINY, "--out", tmp_path / "some_file" / "run")
    line = one_line(err)
    assert code == 2 and "some_file" in line
    assert (tmp_path / "some_file").read_text() == "x"


def test_effscale_data_pointing_at_a_file(tmp_path, run_cli, monkeypatch):
    (tmp_path / "data").write_text("x")
    monkeypatch.setenv("EFFSCALE_DATA", str(tmp_path / "data"))
    code, out, err = run_cli("train", *TINY[2:], "--data", "cifar10", "--out", tmp_path / "run")
    line = one_line(err)
    assert code == 2 and "EFFSCALE_DATA" in line and "is a file" in line


def test_effscale_data_unwritable_names_the_variable(tmp_path, monkeypatch):
    from effscale.cli.main import os_error_line
    monkeypatch.setenv("EFFSCALE_DATA", str(tmp_path / "data"))
    exc = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "data" / "cifar10"))
    line = os_error_line(exc, "train")
    assert "EFFSCALE_DATA=" in line and "Permission denied (errno 13)" in line


class _FullDisk:
    """A file whose writes fail as on a full disk once a few bytes are in: what the kernel
    says through write(2) to a Python file object."""

    def __init__(self, file):
        self.file, self.written = file, 0

    def write(self, data):
        if self.written + len(data) > 100:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def test_disk_full_while_saving_state_pt_is_one_line_and_keeps_the_last_state(
        tmp_path, run_cli, monkeypatch, one_thread):
    """torch.save given a path drops the errno ("file write failed"); the state is written
    through a file object so the ENOSPC itself reaches the one-line OS error path."""
    import builtins
    import effscale.training.state as state
    out, calls, before = tmp_path / "run", [], {}

    def fake_open(path, mode="r", *args, **kwargs):
        file = builtins.open(path, mode, *args, **kwargs)
        if "state.pt" in os.path.basename(str(path)) and "w" in mode:
            calls.append(path)
            if len(calls) == 2:  # epoch 2's commit point: epoch 1's state.pt is the last good
                before.update(hashes(out))
                return _FullDisk(file)
        return file
    monkeypatch.setattr(state, "open", fake_open, raising=False)
    code, _, err = run_cli("train", *TINY, "--out", out)
    line = one_line(err)
    assert code == 2 and "No space left on device (errno 28)" in line, line
    assert f"cannot write {out / 'state.pt'}" in line and "--resume" in line
    assert before and hashes(out) == before  # state.pt of epoch 1, byte for byte
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
    monkeypatch.undo()
    code, _, err = run_cli("train", *TINY, "--out", out, "--resume")
    assert code == 0, err
    assert len((out / "metrics.csv").read_text().strip().splitlines()) == 3  # header + 2 epochs
