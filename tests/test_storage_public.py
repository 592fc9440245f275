"""S3_PUBLIC_ENDPOINT_URL: the servers talk to the store at its internal endpoint while the URLs
they hand out name the public one (OSS's public endpoint, or the edge proxying the bucket)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import boto3
import pytest
from django.core.files.base import ContentFile
from moto.server import ThreadedMotoServer

from chat.s3 import PublicS3Storage
from tests.procs import free_port

BUCKET = "echo-public"


@pytest.fixture(scope="module")
def s3_port() -> Iterator[int]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    ).create_bucket(Bucket=BUCKET)
    yield port
    server.stop()


def storage(port: int, public: str) -> PublicS3Storage:
    return PublicS3Storage(
        public_endpoint_url=public,
        bucket_name=BUCKET,
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        access_key="test",
        secret_key="test",
        addressing_style="path",
        signature_version="s3v4",
        querystring_expire=600,
    )


def test_urls_name_the_public_endpoint_and_work_there(s3_port: int) -> None:
    public = f"http://localhost:{s3_port}"  # another name for the store, as a proxy would be
    store = storage(s3_port, public)
    name = store.save("sessions/abc/reply-1.wav", ContentFile(b"RIFF-public"))
    url = store.url(name)
    assert url.startswith(f"{public}/{BUCKET}/sessions/abc/reply-1.wav?")
    assert "127.0.0.1" not in url and "X-Amz-Signature=" in url and "X-Amz-Expires=600" in url
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"RIFF-public"
    # the servers' own operations still use the internal endpoint
    assert store.exists(name)
    store.delete(name)
    assert not store.exists(name)


def test_without_a_public_endpoint_urls_name_the_internal_one(s3_port: int) -> None:
    store = storage(s3_port, "")
    assert store.url("avatars/aria.png").startswith(f"http://127.0.0.1:{s3_port}/{BUCKET}/")
