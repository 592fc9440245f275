"""S3-compatible storage whose URLs name the endpoint clients use, not the one servers use.

On Aliyun the servers reach OSS at its internal endpoint (oss-cn-…-internal.aliyuncs.com: free,
fast, and unreachable from outside) while browsers and cloud ASR need the public one; behind an
edge proxy the store may be reachable only through the edge's own origin. Presigning needs no
request, so the URL is signed by a second client configured with `S3_PUBLIC_ENDPOINT_URL`:
same credentials, bucket and key, another host. Everything else (reads, writes, listing,
deletes) still goes to `S3_ENDPOINT_URL`.
"""

from __future__ import annotations

import threading
from typing import Any

from storages.backends.s3 import S3Storage
from storages.utils import clean_name


class PublicS3Storage(S3Storage):
    def __init__(self, public_endpoint_url: str = "", **settings: Any) -> None:
        self.public_endpoint_url = public_endpoint_url.rstrip("/")
        self._public = threading.local()
        super().__init__(**settings)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_public", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._public = threading.local()

    def _public_client(self) -> Any:
        client = getattr(self._public, "client", None)
        if client is None:
            client = self._create_session().client(
                "s3",
                region_name=self.region_name,
                endpoint_url=self.public_endpoint_url,
                config=self.client_config,
            )
            self._public.client = client
        return client

    def url(
        self,
        name: str,
        parameters: dict[str, Any] | None = None,
        expire: int | None = None,
        http_method: str | None = None,
    ) -> str:
        if not self.public_endpoint_url or not self.querystring_auth:
            return super().url(name, parameters, expire, http_method)
        params = {**(parameters or {}), "Bucket": self.bucket_name}
        params["Key"] = self._normalize_name(clean_name(name))
        return self._public_client().generate_presigned_url(
            "get_object",
            Params=params,
            ExpiresIn=self.querystring_expire if expire is None else expire,
            HttpMethod=http_method,
        )
