"""The doctor reads an `athanor export` manifest beside a model through appliance.protocol.manifest's reader."""

from __future__ import annotations

import hashlib

from appliance.config import StudentConfig
from appliance.doctor import check_model, recorded_sha256
from appliance.protocol.manifest import Artifact, FileEntry, Manifest, write_manifest


def test_an_export_manifest_beside_the_model_is_read_by_the_real_reader(tmp_path):
    path = tmp_path / "student.q8_0.gguf"
    path.write_bytes(b"GGUF bytes")
    digest = hashlib.sha256(b"GGUF bytes").hexdigest()
    artifact = Artifact("gguf", "q8_0", "gguf/student.q8_0.gguf", digest, 10,
                        (FileEntry("gguf/student.q8_0.gguf", digest, 10),))
    write_manifest(Manifest(base="b", adapter="a", artifacts=[artifact]), tmp_path)
    assert recorded_sha256(path) == (digest, str(tmp_path / "manifest.json"))
    assert check_model(StudentConfig(path=path)).status == "ok"
    path.write_bytes(b"tampered")
    assert check_model(StudentConfig(path=path)).status == "fail"


def test_an_export_manifest_that_does_not_list_the_model_records_nothing(tmp_path):
    path = tmp_path / "student.gguf"
    path.write_bytes(b"GGUF bytes")
    other = Artifact("gguf", "f16", "gguf/other.gguf", "ab" * 32, 10)
    write_manifest(Manifest(base="b", adapter="a", artifacts=[other]), tmp_path)
    assert recorded_sha256(path) == (None, "")
