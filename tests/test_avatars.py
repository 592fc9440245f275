"""Avatar characters: the model, the admin a person uses, and the public listing."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.test.utils import override_settings
from PIL import Image

from avatars.face import detect
from avatars.models import Avatar
from tests import portraits

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client_logged_in(client: Client) -> Client:
    get_user_model().objects.create_superuser("boss", "boss@example.com", "correct horse battery")
    assert client.login(username="boss", password="correct horse battery")
    return client


def test_fixture_avatars_are_loaded_with_their_portraits(avatars: list[Avatar]) -> None:
    assert [a.slug for a in avatars] == ["aria", "astra", "lin"]
    for avatar in avatars:
        with avatar.image.open("rb") as handle:
            image = Image.open(io.BytesIO(handle.read()))
        assert image.size == (512, 512)
        assert avatar.persona and avatar.greeting
    assert {a.language for a in avatars} == {"en-US", "zh-CN"}
    astra = next(a for a in avatars if a.slug == "astra")  # the photo carries its landmarks
    assert astra.face["version"] == 1 and len(astra.face["points"]["mouth_outer"]) == 20
    assert (astra.mouth_x, astra.mouth_y) == tuple(astra.face["mouth"])
    assert all(a.face == {} for a in avatars if a.slug != "astra")  # the drawings: mouth point


def test_loading_twice_updates_instead_of_duplicating(avatars: list[Avatar]) -> None:
    from django.core.management import call_command

    Avatar.objects.filter(slug="aria").update(name="Changed")
    call_command("load_avatars", verbosity=0)
    assert Avatar.objects.count() == 3
    assert Avatar.objects.get(slug="aria").name == "Aria"


def test_default_avatar_follows_the_setting(avatars: list[Avatar]) -> None:
    assert Avatar.objects.default().slug == "aria"
    with override_settings(DEFAULT_AVATAR="lin"):
        assert Avatar.objects.default().slug == "lin"
    Avatar.objects.filter(slug__in=["aria", "astra"]).update(enabled=False)
    assert Avatar.objects.default().slug == "lin"


def test_api_lists_enabled_avatars(client: Client, avatars: list[Avatar]) -> None:
    Avatar.objects.filter(slug="lin").update(enabled=False)
    response = client.get("/api/avatars")
    assert response.status_code == 200
    listed = response.json()["avatars"]
    assert [a["slug"] for a in listed] == ["aria", "astra"]
    aria = listed[0]
    assert set(aria) >= {
        "id",
        "slug",
        "name",
        "persona",
        "greeting",
        "image_url",
        "voice",
        "language",
    }
    assert aria["image_url"].startswith("http://testserver/media/avatars/aria")
    image = client.get(aria["image_url"].removeprefix("http://testserver"))
    assert image.status_code == 200
    assert b"".join(image.streaming_content).startswith(b"\x89PNG")


def test_api_refuses_other_methods(client: Client) -> None:
    assert client.post("/api/avatars").status_code == 405


def test_admin_requires_login(client: Client) -> None:
    response = client.get("/admin/avatars/avatar/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_admin_list_search_and_filters(
    admin_client_logged_in: Client, avatars: list[Avatar]
) -> None:
    page = admin_client_logged_in.get("/admin/avatars/avatar/").content.decode()
    assert "Aria" in page and "Lin Xiao" in page
    assert 'class="avatar-thumb"' in page
    assert "By enabled" in page and "By language" in page
    found = admin_client_logged_in.get("/admin/avatars/avatar/", {"q": "travel"}).content.decode()
    assert "Aria" in found and "Lin Xiao" not in found
    filtered = admin_client_logged_in.get("/admin/avatars/avatar/", {"language__exact": "zh-CN"})
    assert "Lin Xiao" in filtered.content.decode() and ">Aria<" not in filtered.content.decode()


def test_admin_change_form_shows_image_preview(
    admin_client_logged_in: Client, avatars: list[Avatar]
) -> None:
    aria = avatars[0]
    page = admin_client_logged_in.get(f"/admin/avatars/avatar/{aria.pk}/change/").content.decode()
    assert 'class="avatar-preview"' in page
    assert f'src="{aria.image.url}"' in page
    assert 'name="persona"' in page and 'name="mouth_y"' in page


def test_admin_creates_an_avatar_with_an_uploaded_image(
    admin_client_logged_in: Client, media_root
) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), (120, 80, 60)).save(buffer, "PNG")
    buffer.name = "face.png"
    buffer.seek(0)
    response = admin_client_logged_in.post(
        "/admin/avatars/avatar/add/",
        {
            "name": "Bo",
            "slug": "bo",
            "enabled": "on",
            "language": "en-US",
            "persona": "You are Bo.",
            "greeting": "Hello",
            "voice": "",
            "image": buffer,
            "drawing": "on",
            "mouth_x": "0.5",
            "mouth_y": "0.72",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    bo = Avatar.objects.get(slug="bo")
    assert bo.image.storage.exists(bo.image.name)
    assert bo.face == {} and (bo.mouth_x, bo.mouth_y) == (0.5, 0.72)  # a drawing: as set by hand
    page = admin_client_logged_in.get(f"/admin/avatars/avatar/{bo.pk}/change/").content.decode()
    assert "hand-set mouth point" in page and 'class="landmarks-mouth" cx="0.5" cy="0.72"' in page


def test_admin_rejects_a_non_image_upload(admin_client_logged_in: Client, media_root) -> None:
    bogus = io.BytesIO(b"not an image at all")
    bogus.name = "face.png"
    response = admin_client_logged_in.post(
        "/admin/avatars/avatar/add/",
        {
            "name": "X",
            "slug": "x",
            "language": "en-US",
            "persona": "p",
            "image": bogus,
            "mouth_x": "0.5",
            "mouth_y": "0.7",
        },
    )
    assert response.status_code == 200
    assert "Upload a valid image" in response.content.decode()
    assert not Avatar.objects.filter(slug="x").exists()


def post_portrait(client: Client, upload: io.BytesIO, slug: str, **extra: str) -> object:
    return client.post(
        "/admin/avatars/avatar/add/",
        {
            "name": slug.title(),
            "slug": slug,
            "enabled": "on",
            "language": "en-US",
            "persona": f"You are {slug}.",
            "image": upload,
            "mouth_x": "0.5",
            "mouth_y": "0.7",
            **extra,
        },
    )


@pytest.mark.parametrize(
    "canvas, size, at, fmt",
    [
        ((1600, 900), 700, (700, 150), "JPEG"),
        ((600, 1400), 512, (44, 100), "WEBP"),
        ((512, 512), 512, (0, 0), "PNG"),
    ],
    ids=["landscape-jpeg", "tall-webp", "square-png"],
)
def test_admin_upload_of_a_photo_is_cropped_to_the_face_with_its_landmarks(
    admin_client_logged_in: Client,
    media_root,
    canvas: tuple[int, int],
    size: int,
    at: tuple[int, int],
    fmt: str,
) -> None:
    upload = portraits.encoded(portraits.placed(canvas, size, at), fmt, f"me.{fmt.lower()}")
    response = post_portrait(admin_client_logged_in, upload, "me")
    assert response.status_code == 302, response.content.decode()[:3000]
    me = Avatar.objects.get(slug="me")
    with me.image.open("rb") as handle:
        stored = Image.open(io.BytesIO(handle.read()))
        stored.load()
    assert stored.size == (512, 512) and me.image.name.endswith(".png")
    found = detect(stored)  # what is stored is the crop the landmarks describe
    assert abs(found.mouth[0] - me.face["mouth"][0]) < 0.02
    assert abs(found.mouth[1] - me.face["mouth"][1]) < 0.02
    assert (me.mouth_x, me.mouth_y) == tuple(me.face["mouth"])
    page = admin_client_logged_in.get(f"/admin/avatars/avatar/{me.pk}/change/").content.decode()
    assert 'class="avatar-landmarks"' in page and 'class="avatar-preview"' in page
    for region in ("mouth_outer", "mouth_inner", "left_eye", "right_eye", "jaw"):
        assert f'class="landmarks-{region}"' in page
    listing = admin_client_logged_in.get("/admin/avatars/avatar/").content.decode()
    assert 'alt="True"' in listing  # the list's "Face landmarks" column


@pytest.mark.parametrize(
    "make, says",
    [
        (portraits.no_face, "No face found"),
        (portraits.two_faces, "2 faces found"),
        (portraits.tiny_face, "The face is too small"),
        (portraits.face_cut_off_left, "The face is cut off at the left edge"),
    ],
    ids=["no face", "two faces", "too small", "cut off"],
)
def test_admin_refuses_a_photo_it_cannot_animate_and_saves_nothing(
    admin_client_logged_in: Client, media_root, make: object, says: str
) -> None:
    upload = portraits.encoded(make(), "JPEG", "me.jpg")  # type: ignore[operator]
    response = post_portrait(admin_client_logged_in, upload, "me")
    assert response.status_code == 200
    page = response.content.decode()
    assert says in page and "errorlist" in page
    assert not Avatar.objects.filter(slug="me").exists()
    assert not any((media_root / "avatars").glob("me*"))


def test_admin_replacing_a_drawing_with_a_photo_finds_the_face(
    admin_client_logged_in: Client, avatars: list[Avatar]
) -> None:
    lin = next(a for a in avatars if a.slug == "lin")
    upload = portraits.encoded(portraits.astronaut(), "JPEG", "new.jpg")
    form = {
        "name": lin.name,
        "slug": lin.slug,
        "enabled": "on",
        "language": lin.language,
        "persona": lin.persona,
        "greeting": lin.greeting,
        "voice": lin.voice,
        "image": upload,
        "mouth_x": "0.5",
        "mouth_y": "0.7",
    }
    response = admin_client_logged_in.post(f"/admin/avatars/avatar/{lin.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[:3000]
    lin.refresh_from_db()
    assert lin.face["points"]["jaw"] and lin.mouth_y != 0.7
    # saving again without a new image keeps the landmarks
    form.pop("image")
    form["mouth_x"], form["mouth_y"] = str(lin.mouth_x), str(lin.mouth_y)
    admin_client_logged_in.post(f"/admin/avatars/avatar/{lin.pk}/change/", form)
    lin.refresh_from_db()
    assert lin.face["points"]["jaw"]


def test_admin_turns_a_phone_photo_upright_by_its_exif_orientation(
    admin_client_logged_in: Client, media_root
) -> None:
    sideways = portraits.placed((900, 700), 600, (150, 50)).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: viewers turn it 90° clockwise, upright again
    upload = io.BytesIO()
    sideways.save(upload, "JPEG", quality=90, exif=exif)
    upload.name = "phone.jpg"
    upload.seek(0)
    response = post_portrait(admin_client_logged_in, upload, "phone")
    assert response.status_code == 302, response.content.decode()[:3000]
    phone = Avatar.objects.get(slug="phone")
    eyes = phone.face["points"]["left_eye"] + phone.face["points"]["right_eye"]
    assert max(y for _, y in eyes) < phone.face["mouth"][1]  # eyes above the mouth: upright


def truncated_jpeg() -> io.BytesIO:
    whole = portraits.encoded(portraits.astronaut(), "JPEG", "cut.jpg").getvalue()
    upload = io.BytesIO(whole[: len(whole) // 2])
    upload.name = "cut.jpg"
    return upload


def animated_webp() -> io.BytesIO:
    frames = [portraits.no_face(), portraits.astronaut().resize((640, 480))]
    upload = io.BytesIO()
    frames[0].save(upload, "WEBP", save_all=True, append_images=frames[1:], duration=100)
    upload.name = "anim.webp"
    upload.seek(0)
    return upload


@pytest.mark.parametrize(
    "make, says",
    [(truncated_jpeg, "cannot be read"), (animated_webp, "No face found")],
    ids=["truncated jpeg", "animated webp, no face in its first frame"],
)
def test_admin_answers_a_broken_or_odd_image_with_a_form_error(
    admin_client_logged_in: Client, media_root, make: object, says: str
) -> None:
    response = post_portrait(admin_client_logged_in, make(), "odd")  # type: ignore[operator]
    assert response.status_code == 200
    page = response.content.decode()
    assert "errorlist" in page and says in page
    assert not Avatar.objects.filter(slug="odd").exists()
