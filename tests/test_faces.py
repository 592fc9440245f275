"""Faces in portraits (avatars/face.py) with the real models: landmarks where a person sees
them, the square crop EchoMimic expects, and a clear refusal of what cannot be animated."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from avatars.face import Face, FaceError, crop_square, detect
from tests import portraits

FIXTURE = "fixtures/avatars.json"


def centre(points: list[tuple[float, float]]) -> np.ndarray:
    return np.asarray(points).mean(axis=0)


def test_landmarks_of_the_photo_sit_where_a_person_sees_them() -> None:
    face = detect(portraits.astronaut())
    p = face.points
    left_eye, right_eye = centre(p["left_eye"]), centre(p["right_eye"])
    mouth = np.asarray(face.mouth)
    assert left_eye[0] < mouth[0] < right_eye[0]  # the mouth between the eyes, across
    assert max(left_eye[1], right_eye[1]) < centre(p["nose"])[1] < mouth[1]  # eyes, nose, mouth
    chin = max(y for _, y in p["jaw"])
    assert mouth[1] < chin
    jaw = p["jaw"]
    assert jaw[0][0] < mouth[0] < jaw[-1][0]  # from the image's left ear to its right one
    outer = np.asarray(p["mouth_outer"])
    assert outer[:, 0].min() < mouth[0] < outer[:, 0].max()
    assert outer[:, 1].min() < mouth[1] < outer[:, 1].max()
    x0, y0, x1, y1 = face.box
    assert x0 < left_eye[0] and right_eye[0] < x1 and y0 < left_eye[1] and mouth[1] < y1
    # her lips are parted in a smile: the inner ring encloses an opening, inside the outer one
    inner = np.asarray(p["mouth_inner"])
    assert np.ptp(inner[:, 1]) > 0 and np.ptp(inner[:, 1]) < np.ptp(outer[:, 1])


@pytest.mark.parametrize(
    "canvas, size, at",
    [((1600, 900), 700, (700, 150)), ((600, 1400), 512, (44, 100)), ((2000, 2000), 1400, (0, 0))],
    ids=["landscape", "tall", "large"],
)
def test_crop_is_the_square_around_the_face_whatever_the_upload(
    canvas: tuple[int, int], size: int, at: tuple[int, int]
) -> None:
    image = portraits.placed(canvas, size, at)
    crop, face = crop_square(image, detect(image))
    assert crop.size == (512, 512)
    x0, y0, x1, y1 = face.box
    # EchoMimic's crop: the face box grown by half its size each side, so it fills half the
    # square, centred where the photo allows
    assert (x1 - x0) == pytest.approx(0.5, abs=0.03) and (x0 + x1) / 2 == pytest.approx(
        0.5, abs=0.03
    )
    again = detect(crop)  # the landmarks carried into the crop are where the model sees them
    assert np.allclose(again.mouth, face.mouth, atol=0.02)
    assert np.allclose(centre(again.points["left_eye"]), centre(face.points["left_eye"]), atol=0.02)


def test_crop_near_an_edge_keeps_the_face_inside_without_stretching() -> None:
    image = portraits.placed((900, 700), 512, (0, 0))  # her hair touches the top edge
    crop, face = crop_square(image, detect(image))
    assert crop.size == (512, 512)
    assert all(0.0 < v < 1.0 for v in face.box)


@pytest.mark.parametrize(
    "make, says",
    [
        (portraits.no_face, "No face found"),
        (portraits.two_faces, "2 faces found"),
        (portraits.tiny_face, "too small"),
        (portraits.face_cut_off_left, "cut off at the left edge"),
    ],
    ids=["no face", "two faces", "too small", "cut off"],
)
def test_portraits_that_cannot_be_animated_are_refused_with_the_reason(
    make: object, says: str
) -> None:
    with pytest.raises(FaceError, match=says):
        detect(make())  # type: ignore[operator]


def test_face_json_follows_the_shared_layout_and_round_trips() -> None:
    crop, face = crop_square(portraits.astronaut(), detect(portraits.astronaut()))
    data = json.loads(json.dumps(face.to_json()))
    assert data["version"] == 1 and set(data) == {"version", "points", "mouth", "box"}
    regions = {"mouth_outer", "mouth_inner", "left_eye", "right_eye", "jaw", "nose"}
    assert set(data["points"]) == regions
    values = [v for ring in data["points"].values() for point in ring for v in point]
    assert all(0.0 <= v <= 1.0 for v in values + data["mouth"] + data["box"])
    back = Face.from_json(data)
    assert back.mouth == tuple(data["mouth"]) and back.points["jaw"][0] == tuple(
        data["points"]["jaw"][0]
    )
    with pytest.raises(FaceError):
        Face.from_json({**data, "version": 99})


def test_photo_fixture_carries_the_landmarks_of_its_own_image() -> None:
    astra = next(e for e in json.loads(open(FIXTURE).read()) if e["slug"] == "astra")
    stored = Face.from_json(astra["face"])
    with Image.open(f"fixtures/{astra['image']}") as image:
        assert image.size == (512, 512)
        found = detect(image)
    assert np.allclose(found.mouth, stored.mouth, atol=0.02)
    assert (astra["mouth_x"], astra["mouth_y"]) == pytest.approx(stored.mouth, abs=1e-3)
