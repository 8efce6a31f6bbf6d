"""Backends describe themselves: the config unions, tag errors and factories come from the
registries in daemon/sensing/backends/ and daemon/vision/cameras/."""
from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel, ValidationError

from daemon.config import ConfigError, parse_config
from daemon.registry import Registry, StrictModel
from daemon.sensing.registry import SENSING, SensingSettings
from daemon.vision.registry import CAMERAS, CameraSettings


def _cfg(**over):
    d = {"version": 1, "unit_id": "u1", "store_id": "s1", "state_dir": "/tmp/x",
         "sensing": {"backend": "sim"}, "shelves": [{"id": "1", "plates": [{"id": 1}]}]}
    d.update(over)
    return d


def test_every_backend_and_camera_type_is_registered():
    assert SENSING.names() == ("hx711", "iio", "replay", "sim")
    assert CAMERAS.names() == ("picamera2", "replay", "sim", "v4l2")
    for name in SENSING.names():
        assert issubclass(SENSING.entry(name).model, SensingSettings)
    for name in CAMERAS.names():
        assert issubclass(CAMERAS.entry(name).model, CameraSettings)


@pytest.mark.parametrize("over, expected", [
    ({"sensing": {"backend": "gpio"}}, "sensing: unknown backend 'gpio'; expected hx711, iio, replay or sim"),
    ({"sensing": {}}, "sensing: required key 'backend' is missing (hx711, iio, replay or sim)"),
    ({"camera": {"type": "usb"}},
     "camera: unknown camera type 'usb'; expected picamera2, replay, sim or v4l2"),
    ({"camera": {}}, "camera: required key 'type' is missing (picamera2, replay, sim or v4l2)"),
    ({"sensing": {"backend": "sim", "type": "x"}}, "sensing.type: unknown key"),
    ({"sensing": {"backend": "sim"}, "camera": {"type": "v4l2", "path": "x"}}, "camera.path: unknown key"),
])
def test_tag_errors_come_from_the_registry(over, expected):
    with pytest.raises(ConfigError) as exc:
        parse_config(_cfg(**over))
    assert exc.value.problems == [expected]


def test_a_registry_builds_its_union_and_refuses_a_bad_registration():
    reg: Registry = Registry("thing", "kind", "thing kind")

    class A(StrictModel):
        kind: Literal["a"]
        x: int = 1

    class B(StrictModel):
        kind: Literal["b"]

    reg.register("a", A, lambda cfg, layout: "made a")
    reg.register("b", B, lambda cfg, layout: "made b")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a", A, lambda cfg, layout: None)
    with pytest.raises(TypeError, match="Literal"):
        reg.register("c", A, lambda cfg, layout: None)

    class Holder(BaseModel):
        thing: reg.union()  # type: ignore[valid-type]

    h = Holder.model_validate({"thing": {"kind": "a", "x": 3}})
    assert isinstance(h.thing, A) and h.thing.x == 3
    assert reg.factory_for(h.thing)(None, None) == "made a"
    assert reg.unknown("z") == "unknown thing kind 'z'; expected a or b"
    with pytest.raises(ValidationError):
        Holder.model_validate({"thing": {"kind": "b", "x": 3}})  # extra keys are errors


def test_relative_paths_follow_each_backends_path_keys(tmp_path):
    import yaml

    from daemon.config import load_config
    (tmp_path / "rec.jsonl").write_text("")
    (tmp_path / "rec.jsonl.frames").write_text("")
    p = tmp_path / "unit.yaml"
    p.write_text(yaml.safe_dump(_cfg(sensing={"backend": "replay", "path": "rec.jsonl"},
                                     camera={"type": "replay", "path": "rec.jsonl.frames"},
                                     state_dir="state")))
    cfg = load_config(p)
    assert cfg.sensing.path == tmp_path / "rec.jsonl"
    assert cfg.camera.path == tmp_path / "rec.jsonl.frames"
    assert cfg.state_dir == tmp_path / "state"
