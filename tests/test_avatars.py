"""Avatar characters: the model, the admin a person uses, and the public listing."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.test.utils import override_settings
from PIL import Image

from avatars.models import Avatar

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client_logged_in(client: Client) -> Client:
    get_user_model().objects.create_superuser("boss", "boss@example.com", "correct horse battery")
    assert client.login(username="boss", password="correct horse battery")
    return client


def test_fixture_avatars_are_loaded_with_their_portraits(avatars: list[Avatar]) -> None:
    assert [a.slug for a in avatars] == ["aria", "lin"]
    for avatar in avatars:
        with avatar.image.open("rb") as handle:
            image = Image.open(io.BytesIO(handle.read()))
        assert image.size == (512, 512)
        assert avatar.persona and avatar.greeting
    assert {a.language for a in avatars} == {"en-US", "zh-CN"}


def test_loading_twice_updates_instead_of_duplicating(avatars: list[Avatar]) -> None:
    from django.core.management import call_command

    Avatar.objects.filter(slug="aria").update(name="Changed")
    call_command("load_avatars", verbosity=0)
    assert Avatar.objects.count() == 2
    assert Avatar.objects.get(slug="aria").name == "Aria"


def test_default_avatar_follows_the_setting(avatars: list[Avatar]) -> None:
    assert Avatar.objects.default().slug == "aria"
    with override_settings(DEFAULT_AVATAR="lin"):
        assert Avatar.objects.default().slug == "lin"
    Avatar.objects.filter(slug="aria").update(enabled=False)
    assert Avatar.objects.default().slug == "lin"


def test_api_lists_enabled_avatars(client: Client, avatars: list[Avatar]) -> None:
    Avatar.objects.filter(slug="lin").update(enabled=False)
    response = client.get("/api/avatars")
    assert response.status_code == 200
    listed = response.json()["avatars"]
    assert [a["slug"] for a in listed] == ["aria"]
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
            "mouth_x": "0.5",
            "mouth_y": "0.72",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    bo = Avatar.objects.get(slug="bo")
    assert bo.image.storage.exists(bo.image.name)


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
