"""State files that survive faults: ``save_state`` replaces the file atomically (a process killed in
the middle of a save leaves the previous checkpoint), and ``load_state`` raises ``ValueError`` naming
the file for every file that is not a complete state file (NumPy only)."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import numpy.lib.format as npy_format
import pytest
from porting_cases import reference, stream

import uniopt
from uniopt.porting import export_state, state_file_name

posix_only = pytest.mark.skipif(os.name != "posix", reason="SIGKILL, umask and symlinks are POSIX's")


def _record(seed: int, n: int) -> uniopt.PortableState:
    """An Adam record of two float32 parameters of ``n`` elements from ``seed`` (the fault test's
    child process builds the same record with its own copy of these lines)."""
    rng = np.random.default_rng(seed)
    slots = tuple(
        {"exp_avg": rng.standard_normal(n).astype(np.float32), "exp_avg_sq": rng.random(n).astype(np.float32)}
        for _ in range(2)
    )
    return uniopt.PortableState("Adam", {"lr": 0.001}, seed + 1, slots, ((n,), (n,)), ("float32", "float32"))


def _radam_record() -> uniopt.PortableState:
    spec = uniopt.RAdam(lr=0.01)
    params, grads = stream("float32", steps=2)
    params, state = reference(spec, params, grads)
    return export_state(spec, state, params)


def _assert_same(loaded: uniopt.PortableState, expected: uniopt.PortableState) -> None:
    """Every field equal and every slot the same bits, dtype and shape."""
    assert (loaded.optimizer, loaded.step, loaded.convention) == (
        expected.optimizer,
        expected.step,
        expected.convention,
    )
    assert loaded.hyperparameters == expected.hyperparameters and loaded.history == expected.history
    assert loaded.shapes == expected.shapes and loaded.dtypes == expected.dtypes
    assert len(loaded.slots) == len(expected.slots)
    for mine, theirs in zip(loaded.slots, expected.slots, strict=True):
        assert mine.keys() == theirs.keys()
        for name, value in theirs.items():
            assert mine[name].dtype == value.dtype and mine[name].shape == value.shape
            assert mine[name].tobytes() == value.tobytes(), name


def _load_error(path) -> str:
    """``load_state``'s message for ``path``: exactly a ``ValueError`` that starts with the name."""
    with pytest.raises(ValueError) as info:
        uniopt.load_state(path)
    assert type(info.value) is ValueError, repr(info.value)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message


# -- atomic writes ---------------------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    import numpy.lib.format as npy_format
    import uniopt

    def record(seed, n):
        rng = np.random.default_rng(seed)
        slots = tuple(
            {
                "exp_avg": rng.standard_normal(n).astype(np.float32),
                "exp_avg_sq": rng.random(n).astype(np.float32),
            }
            for _ in range(2)
        )
        shapes, dtypes = ((n,), (n,)), ("float32", "float32")
        return uniopt.PortableState("Adam", {"lr": 0.001}, seed + 1, slots, shapes, dtypes)

    path, n = sys.argv[1], int(sys.argv[2])
    uniopt.save_state(path, record(0, n))
    print("saved", flush=True)

    write_array, large = npy_format.write_array, []

    def stalled_write_array(fp, array, *args, **kwargs):
        if array.nbytes < 4 * n:  # the metadata
            return write_array(fp, array, *args, **kwargs)
        large.append(array)
        if len(large) < 3:
            return write_array(fp, array, *args, **kwargs)
        data = np.ascontiguousarray(array).tobytes()  # the third slot: its first half, then wait
        fp.write(data[: len(data) // 2])
        print("mid-write", len(large), flush=True)
        time.sleep(600)

    npy_format.write_array = stalled_write_array
    uniopt.save_state(path, record(1, n))
    print("finished", flush=True)  # never reached: the parent kills the process above
    """
)


@posix_only
def test_a_save_killed_mid_write_leaves_the_previous_checkpoint(tmp_path):
    """A child process saves a good checkpoint (seed 0), then saves a second, 16 MB state (seed 1)
    over it and is killed with SIGKILL in the middle of that write.

    The middle is made deterministic: the child replaces ``numpy.lib.format.write_array`` (which
    ``numpy.savez`` calls once per array) by a function that writes the metadata and the first two
    slot arrays for real, then the first half of the third slot's bytes, prints ``mid-write`` and
    sleeps. The parent waits for that line, checks that the write really is under way (a temporary
    file beside the target holds more than the first two arrays and less than the whole archive,
    and the target still holds the first checkpoint's bytes), then kills the child. Afterwards
    ``load_state`` of the target gives the first checkpoint bit for bit (against the record the
    parent builds from seed 0 itself), and the half-written temporary file that SIGKILL left is
    hidden, not named ``*.npz`` and refused by ``load_state``.
    """
    n = 1 << 20  # float32: 4 MiB per slot, four slots
    target = tmp_path / "checkpoint.npz"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(target), str(n)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline() == "saved\n", child.stderr.read()
        first = target.read_bytes()
        assert child.stdout.readline() == "mid-write 3\n", child.stderr.read()
        others = sorted(p for p in tmp_path.iterdir() if p != target)
        assert len(others) == 1, others
        temp = others[0]
        size = temp.stat().st_size
        assert 2 * 4 * n < size < 4 * 4 * n, size  # two slots done, the third half written
        assert target.read_bytes() == first  # the target is untouched while the write runs
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()
    _assert_same(uniopt.load_state(target), _record(0, n))
    assert temp.exists() and temp.name.startswith(".checkpoint.npz.") and temp.suffix == ".tmp"
    assert sorted(tmp_path.glob("*.npz")) == [target]
    assert "not a readable zip archive" in _load_error(temp)  # partial: no central directory yet


class _Interrupted(BaseException):
    pass


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), _Interrupted()])
def test_a_failed_save_keeps_the_previous_file_and_leaves_no_temporary_file(tmp_path, monkeypatch, error):
    target = tmp_path / "s.npz"
    uniopt.save_state(target, _record(0, 100))
    before = target.read_bytes()
    write_array, calls = npy_format.write_array, []

    def failing_write_array(fp, array, *args, **kwargs):
        calls.append(array.shape)
        if len(calls) == 3:  # after two arrays: part of the third, then the error
            fp.write(array.tobytes()[:10])
            raise error
        return write_array(fp, array, *args, **kwargs)

    monkeypatch.setattr(npy_format, "write_array", failing_write_array)
    with pytest.raises(type(error)):
        uniopt.save_state(target, _record(1, 100))
    assert len(calls) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]
    assert target.read_bytes() == before
    _assert_same(uniopt.load_state(target), _record(0, 100))


def test_a_save_leaves_only_the_file(tmp_path):
    uniopt.save_state(tmp_path / "s.npz", _record(0, 10))
    uniopt.save_state(tmp_path / "s.npz", _record(1, 10))  # replaces it
    assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]
    _assert_same(uniopt.load_state(tmp_path / "s.npz"), _record(1, 10))


def test_npz_is_appended_to_a_name_without_it_as_numpy_savez_does(tmp_path):
    record = _record(0, 10)
    uniopt.save_state(tmp_path / "ckpt", record)
    uniopt.save_state(str(tmp_path / "run.v2.npz"), record)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz", "run.v2.npz"]
    assert state_file_name(tmp_path / "ckpt") == str(tmp_path / "ckpt.npz")
    assert state_file_name("a.npz") == "a.npz" and state_file_name("a.NPZ") == "a.NPZ.npz"
    _assert_same(uniopt.load_state(tmp_path / "ckpt.npz"), record)
    with pytest.raises(FileNotFoundError):  # load_state reads the name as given
        uniopt.load_state(tmp_path / "ckpt")


def test_file_objects_are_written_and_read(tmp_path):
    record = _radam_record()
    buffer = io.BytesIO()
    uniopt.save_state(buffer, record)
    buffer.seek(0)
    _assert_same(uniopt.load_state(buffer), record)
    with open(tmp_path / "f.npz", "wb") as file:
        uniopt.save_state(file, record)
    with open(tmp_path / "f.npz", "rb") as file:
        _assert_same(uniopt.load_state(file), record)


@posix_only
def test_permission_bits_are_a_new_files_or_the_replaced_files(tmp_path):
    mask = os.umask(0o027)
    try:
        uniopt.save_state(tmp_path / "new.npz", _record(0, 10))
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "new.npz").stat().st_mode) == 0o640  # as open() would create it
    (tmp_path / "new.npz").chmod(0o604)
    uniopt.save_state(tmp_path / "new.npz", _record(1, 10))
    assert stat.S_IMODE((tmp_path / "new.npz").stat().st_mode) == 0o604


@posix_only
def test_a_symbolic_link_is_written_through(tmp_path):
    (tmp_path / "real").mkdir()
    link = tmp_path / "latest.npz"
    link.symlink_to(tmp_path / "real" / "s.npz")
    uniopt.save_state(link, _record(0, 10))
    assert link.is_symlink() and (tmp_path / "real" / "s.npz").is_file()
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["s.npz"]
    _assert_same(uniopt.load_state(link), _record(0, 10))


def test_a_missing_folder_raises_the_os_error(tmp_path):
    target = tmp_path / "nowhere" / "s.npz"
    with pytest.raises(FileNotFoundError) as missing:
        uniopt.save_state(target, _record(0, 10))
    assert missing.value.filename == str(target)  # the state file, not the temporary one
    assert "cannot create a file in its folder" in str(missing.value)
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(IsADirectoryError if os.name == "posix" else OSError) as folder:
        uniopt.save_state(tmp_path / "d.npz", _record(0, 10))
    assert folder.value.filename == str(tmp_path / "d.npz") and "cannot be replaced" in str(folder.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]  # no temporary file left
    with pytest.raises(FileNotFoundError):
        uniopt.load_state(tmp_path / "missing.npz")
    with pytest.raises(IsADirectoryError if os.name == "posix" else OSError):
        uniopt.load_state(tmp_path)


# -- unreadable files: ValueError naming the file --------------------------------------------------


def test_every_truncation_is_refused(tmp_path):
    uniopt.save_state(tmp_path / "good.npz", _radam_record())
    data = (tmp_path / "good.npz").read_bytes()
    bad = tmp_path / "bad.npz"
    messages = set()
    for size in range(len(data)):  # every proper prefix, down to the empty file
        bad.write_bytes(data[:size])
        messages.add(_load_error(bad).split(" (")[0])
    assert messages == {
        f"{bad}: the file is empty, not a uniopt state file",
        f"{bad}: not a readable zip archive",
    }


def test_every_flipped_byte_is_refused_or_lies_in_a_field_the_reader_ignores(tmp_path):
    """Each byte of a saved file inverted in turn: ``load_state`` raises ``ValueError`` naming the
    file, or (a byte zip readers ignore: timestamps, version fields, attributes) returns the saved
    record bit for bit. A flip inside any array's data is always refused (the member's CRC)."""
    record = _radam_record()
    uniopt.save_state(tmp_path / "good.npz", record)
    data = (tmp_path / "good.npz").read_bytes()
    payloads = set()  # the offsets of every slot's bytes in the file
    for slots in record.slots:
        for value in slots.values():
            raw = value.tobytes()
            start = data.find(raw)
            assert start > 0 and data.find(raw, start + 1) == -1
            payloads.update(range(start, start + len(raw)))
    bad = tmp_path / "bad.npz"
    refused = ignored = 0
    for offset in range(len(data)):
        flipped = bytearray(data)
        flipped[offset] ^= 0xFF
        bad.write_bytes(flipped)
        try:
            loaded = uniopt.load_state(bad)
        except ValueError as exc:
            assert type(exc) is ValueError and str(exc).startswith(f"{bad}: "), repr(exc)
            refused += 1
            continue
        assert offset not in payloads, offset
        _assert_same(loaded, record)
        ignored += 1
    assert refused > len(payloads) and refused + ignored == len(data)


def test_an_empty_file_a_random_one_and_an_npy_file_are_refused(tmp_path):
    (tmp_path / "empty.npz").write_bytes(b"")
    assert (
        _load_error(tmp_path / "empty.npz")
        == f"{tmp_path / 'empty.npz'}: the file is empty, not a uniopt state file"
    )
    (tmp_path / "random.npz").write_bytes(np.random.default_rng(0).bytes(4096))
    assert "not a readable zip archive (BadZipFile: File is not a zip file)" in _load_error(
        tmp_path / "random.npz"
    )
    np.save(tmp_path / "array.npy", np.zeros(3))
    assert "not a readable zip archive" in _load_error(tmp_path / "array.npy")
    (tmp_path / "text.npz").write_text("{}")
    assert "not a readable zip archive" in _load_error(tmp_path / "text.npz")


def _members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def _write_members(path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        # a member rewritten with a correct CRC but a damaged .npy inside
        (
            lambda m: m.update({"slots/1/exp_avg.npy": b"\x93NUMPY\x01\x00garbage"}),
            "array 'slots/1/exp_avg' is damaged",
        ),
        (lambda m: m.update({"slots/1/exp_avg.npy": b"not an npy"}), "array 'slots/1/exp_avg' is damaged"),
        (
            lambda m: m.update({"slots/1/exp_avg.npy": m["slots/1/exp_avg.npy"][:-4]}),
            r"array 'slots/1/exp_avg' is damaged \(its header says uint32\[5\], 20 bytes; the archive "
            "holds 16 bytes of data",
        ),
        (
            lambda m: m.update({"slots/1/exp_avg.npy": m["slots/1/exp_avg.npy"] + b"\0"}),
            "the archive holds 21 bytes",
        ),
        (
            lambda m: m.update({"slots/1/exp_avg.npy": _npy(np.array([None, 1], dtype=object))}),
            r"array 'slots/1/exp_avg' holds Python objects \(pickled data\)",
        ),
        (
            lambda m: m.update({"slots/1/exp_avg.npy": _npy(np.zeros(5, np.float32))}),
            r"is float32\[5\], expected the bits of float32\[5\]",
        ),
        (lambda m: m.update({"notes.txt": b"hello"}), "'notes.txt' is not an array"),
        (
            lambda m: m.update({"__uniopt_state__.npy": _npy(np.frombuffer(b"[1, 2]", np.uint8))}),
            "the metadata is a JSON list",
        ),
        (
            lambda m: m.update({"__uniopt_state__.npy": _npy(np.frombuffer(b"\xff\xfe", np.uint8))}),
            "unreadable metadata",
        ),
        (
            lambda m: m.update({"__uniopt_state__.npy": _npy(np.zeros(3, np.float64))}),
            r"the metadata is float64\[3\], expected uint8 text",
        ),
    ],
)
def test_damaged_members_are_refused(tmp_path, edit, match):
    uniopt.save_state(tmp_path / "good.npz", _radam_record())
    members = _members(tmp_path / "good.npz")
    edit(members)
    _write_members(tmp_path / "bad.npz", members)
    message = _load_error(tmp_path / "bad.npz")
    assert re.search(match, message), message


def _with_meta(**changes):
    def edit(members):
        meta = json.loads(np.load(io.BytesIO(members["__uniopt_state__.npy"])).tobytes())
        meta.update(changes)
        members["__uniopt_state__.npy"] = _npy(np.frombuffer(json.dumps(meta).encode(), np.uint8))

    return edit


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (
            {"shapes": [[3, "4"], [5], []]},
            r"parameter 0 has shape \[3, '4'\], expected a list of integers >= 0",
        ),
        ({"shapes": [[3, 4], 5, []]}, "parameter 1 has shape 5"),
        ({"shapes": [[3, 4], [-5], []]}, r"parameter 1 has shape \[-5\]"),
        ({"slot_names": "exp_avg"}, "slot_names 'exp_avg' is not a list of distinct names"),
        ({"slot_names": ["exp_avg", "exp_avg"]}, "is not a list of distinct names"),
        ({"hyperparameters": [0.01]}, r"hyperparameters \[0.01\] is not a JSON dict"),
        ({"optimizer": 7}, "optimizer 7 is not a JSON str"),
        ({"step": 2.5}, "step must be an integer >= 0, got 2.5"),
        ({"step": True}, "step must be an integer >= 0, got True"),
        ({"hyperparameters": {"lr": {"a": 1}}}, r"hyperparameter lr=\{'a': 1\} \(dict\) is not a number"),
        ({"history": {"weight_sum": "x"}}, "history weight_sum='x'"),
        ({"convention": "mxnet"}, "convention 'mxnet' is not one of"),
    ],
)
def test_malformed_metadata_is_refused(tmp_path, changes, match):
    uniopt.save_state(tmp_path / "good.npz", _radam_record())
    members = _members(tmp_path / "good.npz")
    _with_meta(**changes)(members)
    _write_members(tmp_path / "bad.npz", members)
    message = _load_error(tmp_path / "bad.npz")
    assert re.search(match, message), message


def test_an_npz_that_is_not_a_state_file_is_refused(tmp_path):
    np.savez(tmp_path / "weights.npz", w=np.zeros((3, 4)), b=np.zeros(4))
    assert _load_error(tmp_path / "weights.npz").endswith(
        "not a uniopt state file (no __uniopt_state__ entry)"
    )
    np.savez(tmp_path / "pickled.npz", __uniopt_state__=np.array([{"a": 1}], dtype=object))
    assert "holds Python objects" in _load_error(tmp_path / "pickled.npz")


def test_a_compressed_copy_still_loads(tmp_path):
    """A state file recompressed (``numpy.savez_compressed`` of its arrays) is the same archive
    with deflated members: it loads bit for bit, and damage to it is refused like any other."""
    record = _radam_record()
    uniopt.save_state(tmp_path / "s.npz", record)
    with np.load(tmp_path / "s.npz") as archive:
        np.savez_compressed(tmp_path / "c.npz", **{k: archive[k] for k in archive.files})
    _assert_same(uniopt.load_state(tmp_path / "c.npz"), record)
    data = bytearray((tmp_path / "c.npz").read_bytes())
    with zipfile.ZipFile(tmp_path / "c.npz") as archive:
        info = archive.getinfo("slots/0/exp_avg.npy")
    assert info.compress_type == zipfile.ZIP_DEFLATED
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_length + extra_length  # the member's deflated data
    data[start + info.compress_size // 2] ^= 0xFF
    (tmp_path / "c.npz").write_bytes(data)
    assert "array 'slots/0/exp_avg' is damaged" in _load_error(tmp_path / "c.npz")


# -- a record changed after it was made: refused before an import changes anything ----------------


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            lambda r: r.slots[1].update(exp_avg=r.slots[1]["exp_avg"].astype(np.float64)),
            r"parameter 1 slot 'exp_avg' is float64, the state holds the parameter as float32",
        ),
        (
            lambda r: r.slots[2].update(exp_avg_sq=r.slots[2]["exp_avg_sq"].tolist()),
            "parameter 2 slot 'exp_avg_sq' is float, the state holds the parameter as float32",
        ),
    ],
)
def test_a_slot_changed_after_the_record_checked_it_is_refused(change, match):
    """A record's slot mappings are plain dicts: a slot replaced after construction is caught by
    ``check_compatible`` (which every import runs first), not rounded into the target's dtype."""
    spec = uniopt.RAdam(lr=0.01)
    params, grads = stream("float32", steps=2)
    params, state = reference(spec, params, grads)
    record = export_state(spec, state, params)
    change(record)
    with pytest.raises(ValueError, match=match):
        uniopt.porting.import_state(record, spec, params)


def test_a_step_beyond_64_bits_is_refused():
    spec = uniopt.RAdam(lr=0.01)
    params, grads = stream("float32", steps=2)
    params, state = reference(spec, params, grads)
    record = export_state(spec, state, params).replace(step=2**63)
    with pytest.raises(ValueError, match=r"step 9223372036854775808 does not fit a 64-bit step counter"):
        uniopt.porting.import_state(record, spec, params)
    uniopt.porting.check_compatible(record.replace(step=2**63 - 1), spec, [p.shape for p in params])


def test_a_state_of_another_type_is_a_type_error_before_anything_is_written(tmp_path):
    record = _record(0, 10)
    with pytest.raises(TypeError, match=r"state must be a uniopt\.PortableState .*got str \(the arguments"):
        uniopt.save_state(record, str(tmp_path / "s.npz"))
    with pytest.raises(TypeError, match=r"state must be a uniopt\.PortableState .*got dict$"):
        uniopt.save_state(tmp_path / "s.npz", {"state": {}, "param_groups": []})
    assert list(tmp_path.iterdir()) == []
