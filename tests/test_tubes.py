"""Tests for chest-tube labels: the restricted unpickler and the CSV alternative."""

from __future__ import annotations

import builtins
import os
import pickle
import re
from pathlib import Path

import pytest

from spatialspec.data.tubes import TubeLabelError, load_tube_labels

LABELS = {"1.2.3.1": True, "1.2.3.2": False, "1.2.3.3": True}


class _Exploit:
    """Pickles to a call of ``func(arg)``: what a malicious label file would do."""

    def __init__(self, func: object, arg: str) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return self.func, (self.arg,)


def _dump(path: Path, data: object, protocol: int = pickle.HIGHEST_PROTOCOL) -> Path:
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    return path


# --------------------------------------------------------------------------- pickle


@pytest.mark.parametrize("protocol", range(6))
def test_every_pickle_protocol_loads(tmp_path: Path, protocol: int) -> None:
    out = load_tube_labels(_dump(tmp_path / "tubes.pkl", LABELS, protocol))
    assert out == LABELS
    assert all(type(value) is bool for value in out.values())


def test_pickle_detected_by_protocol_byte_without_suffix(tmp_path: Path) -> None:
    assert load_tube_labels(str(_dump(tmp_path / "tubes.bin", LABELS, 4))) == LABELS


def test_int_values_become_bool(tmp_path: Path) -> None:
    out = load_tube_labels(_dump(tmp_path / "t.pickle", {"a": 1, "b": 0, "c": True}, 2))
    assert out == {"a": True, "b": False, "c": True}
    assert all(type(value) is bool for value in out.values())


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_malicious_os_system_pickle_runs_nothing(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    payload = {"1.2.3.1": _Exploit(os.system, f"touch {marker}")}
    path = _dump(tmp_path / "tubes.pkl", payload, protocol)
    with pytest.raises(TubeLabelError, match=r"references (os|posix|nt)\.system, which is not"):
        load_tube_labels(path)
    assert not marker.exists()


def test_malicious_exec_pickle_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w').close()"
    path = _dump(tmp_path / "evil.bin", _Exploit(builtins.exec, code))
    with pytest.raises(TubeLabelError) as info:
        load_tube_labels(path)
    message = str(info.value)
    assert message.startswith(f"{path}: the pickle references builtins.exec")
    assert "only a plain dict of str -> bool is accepted" in message
    assert not marker.exists()


def test_hand_written_global_opcode_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "tubes.pkl"
    path.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    with pytest.raises(TubeLabelError, match=r"references os\.system, which is not allowed"):
        load_tube_labels(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (list(LABELS), r"the pickle holds a list, expected a dict"),
        ("1.2.3", r"the pickle holds a str, expected a dict"),
        ({"a": True, "b": 2}, r"1 problem\n  - key 'b': value 2 \(int\) is not bool"),
        ({"a": "yes"}, r"key 'a': value 'yes' \(str\) is not bool"),
        ({"a": None, "b": 1.0}, r"2 problems.*key 'a': value None \(NoneType\).*'b'.*float"),
        ({3: True}, r"key 3 \(int\) is not a non-empty str"),
        ({" ": True}, r"key ' ' \(str\) is not a non-empty str"),
    ],
)
def test_pickle_with_wrong_content(tmp_path: Path, data: object, message: str) -> None:
    path = _dump(tmp_path / "tubes.pkl", data)
    with pytest.raises(TubeLabelError, match=r"(?s)" + re.escape(str(path)) + r".*" + message):
        load_tube_labels(path)


@pytest.mark.parametrize(
    "content",
    [
        pickle.dumps(LABELS, protocol=4)[:-9],  # truncated
        b"\x80\x04garbage",
        pickle.dumps(LABELS, protocol=0)[:-1],  # no STOP opcode
        pickle.dumps(LABELS) + b"trailing",
    ],
)
def test_corrupt_pickle_names_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "tubes.pkl"
    path.write_bytes(content)
    with pytest.raises(TubeLabelError, match=re.escape(str(path)) + ": (not a readable|unexp)"):
        load_tube_labels(path)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    for name in ("missing.pkl", "missing.csv"):
        with pytest.raises(TubeLabelError, match=re.escape(str(tmp_path / name))):
            load_tube_labels(tmp_path / name)


# --------------------------------------------------------------------------- CSV


def test_csv_values_bom_crlf_and_blank_lines(tmp_path: Path) -> None:
    text = (
        "\ufeffimage_id, Tube ,note\r\n\r\n"
        "a,1,x\r\nb, FALSE ,\r\nc,Yes,\r\n  \r\nd,no,\r\ne,true,\r\nf,0,\r\na,1,dup\r\n"
    )
    path = tmp_path / "tubes.csv"
    path.write_bytes(text.encode())
    out = load_tube_labels(path)
    assert out == {"a": True, "b": False, "c": True, "d": False, "e": True, "f": False}
    assert all(type(value) is bool for value in out.values())


def test_csv_column_order_does_not_matter(tmp_path: Path) -> None:
    path = tmp_path / "tubes.csv"
    path.write_text("tube,image_id\nyes,a\n0,b\n")
    assert load_tube_labels(path) == {"a": True, "b": False}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r": the file is empty"),
        ("id,tube\na,1\n", r":1: missing column\(s\) image_id; found columns id, tube"),
        ("image_id\na\n", r":1: missing column\(s\) tube; found columns image_id"),
        ("image_id,tube\n ,1\n", r": 1 problem\n  - .*:2: image_id is empty"),
        ("image_id,tube\na,1\nb,2\n", r":3: image 'b': tube '2' is not 0/1, true/false or yes/no"),
        ("image_id,tube\na,1\nb\n", r":3: image 'b': tube '' is not"),
        (
            "image_id,tube\na,1\n\na,no\n",
            r":4: image 'a' has tube=False here but tube=True at line 2",
        ),
    ],
)
def test_csv_errors_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "tubes.csv"
    path.write_text(text)
    with pytest.raises(TubeLabelError, match=re.escape(str(path)) + message):
        load_tube_labels(path)


def test_csv_lists_first_five_problems(tmp_path: Path) -> None:
    path = tmp_path / "tubes.csv"
    path.write_text("image_id,tube\n" + "".join(f"id{i},maybe\n" for i in range(7)))
    with pytest.raises(TubeLabelError, match=r"7 problems") as info:
        load_tube_labels(path)
    message = str(info.value)
    assert f"{path}:6: image 'id4'" in message and "id5" not in message
    assert message.endswith("... and 2 more")


# --------------------------------------------------------------------------- real data


@pytest.mark.integration
def test_real_tube_dict() -> None:
    root = os.environ.get("SPATIALSPEC_SHARED_DATA")
    if not root:
        pytest.skip("SPATIALSPEC_SHARED_DATA is not set")
    labels = load_tube_labels(Path(root, "siim", "cxr_tube_dict.pkl"))
    assert len(labels) == 1_951
    assert sum(labels.values()) == 525
    assert all(key.startswith("1.2.276.0.7230010.3.1.4.") for key in labels)
