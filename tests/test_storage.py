"""Storage: a local directory served by the app, and S3 against a real moto server on loopback."""

from __future__ import annotations

import httpx
import pytest

from retouch.serving.core.errors import InvalidInput
from retouch.serving.core.storage import LocalStorage, S3Storage, make_storage

from api_fixtures import image_bytes, make_settings


def test_local_storage_round_trip_and_key_safety(tmp_path):
    storage = LocalStorage(tmp_path / "files", "http://files.test/")
    data = image_bytes(20, 20, fmt="WEBP")
    storage.put("uploads/abc.webp", data, "image/webp")
    assert storage.get("uploads/abc.webp") == data
    assert storage.exists("uploads/abc.webp") and not storage.exists("uploads/none.png")
    assert storage.media_type("uploads/abc.webp") == "image/webp"
    assert storage.url("uploads/abc.webp") == "http://files.test/files/uploads/abc.webp"
    with pytest.raises(KeyError):
        storage.get("uploads/none.png")
    for bad in ("../escape.png", "/abs.png", "a//b.png", "a/./b.png"):
        with pytest.raises(InvalidInput):
            storage.put(bad, data, "image/png")
        assert not storage.exists(bad)


def test_make_storage_follows_settings(tmp_path):
    local = make_storage(make_settings(tmp_path))
    assert isinstance(local, LocalStorage) and local.root == tmp_path / "files"
    s3 = make_storage(make_settings(tmp_path, storage="s3", s3_endpoint_url="http://127.0.0.1:9",
                                    s3_bucket="b"))
    assert isinstance(s3, S3Storage) and s3.bucket == "b"


@pytest.fixture(scope="module")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_credentials(monkeypatch):
    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)


def test_s3_storage_put_get_and_presigned_url(moto_endpoint, aws_credentials):
    storage = S3Storage(moto_endpoint, "retouch-test", "us-east-1")
    data = image_bytes(24, 16)
    storage.put("outputs/job-1/1.png", data, "image/png")
    assert storage.get("outputs/job-1/1.png") == data
    assert storage.exists("outputs/job-1/1.png") and not storage.exists("outputs/none.png")
    assert storage.media_type("outputs/job-1/1.png") == "image/png"
    with pytest.raises(KeyError):
        storage.get("outputs/none.png")
    url = storage.url("outputs/job-1/1.png")
    assert "Signature" in url or "X-Amz-Signature" in url
    response = httpx.get(url)
    assert response.status_code == 200 and response.content == data
    assert response.headers["content-type"] == "image/png"


def test_s3_storage_public_base_url(moto_endpoint, aws_credentials):
    storage = S3Storage(moto_endpoint, "retouch-public", "us-east-1",
                        public_base_url=f"{moto_endpoint}/retouch-public/")
    data = image_bytes(8, 8, fmt="JPEG")
    storage.put("uploads/u.jpeg", data, "image/jpeg")
    url = storage.url("uploads/u.jpeg")
    # A public base URL (a CDN or a public-read bucket) is used as is, never presigned.
    assert url == f"{moto_endpoint}/retouch-public/uploads/u.jpeg"
    assert storage.get("uploads/u.jpeg") == data


def test_cluster_profile_keeps_objects_per_account_in_s3_and_nothing_on_a_pods_disk(
        moto_endpoint, aws_credentials, tmp_path):
    """Two API pods (separate homes) sharing one database and one bucket: an upload through one
    is used by a job created through the other; objects sit under `accounts/<id>/`, and
    neither pod writes a file to its own disk."""
    import time
    from urllib.parse import parse_qs, urlsplit

    from retouch.serving.core import jobs
    from retouch.serving.dispatcher import Dispatcher, DispatcherConfig

    from api_fixtures import api_for

    shared = {"database_url": f"sqlite:///{tmp_path / 'shared.db'}", "storage": "s3",
              "s3_endpoint_url": moto_endpoint, "s3_bucket": "retouch-cluster",
              "storage_account_prefixes": True, "s3_presign_seconds": 600}
    homes = [tmp_path / "pod-a", tmp_path / "pod-b"]
    with api_for(make_settings(homes[0], **shared)) as pod_a, \
            api_for(make_settings(homes[1], **shared, migrate_on_start=False)) as pod_b:
        account_id = pod_a.account()
        _, secret = pod_a.key(account_id)
        upload = pod_a.upload(secret, image_bytes(40, 30))
        created = pod_b.generate(secret, {"tool": "editor", "input": {
            "images": [{"upload_id": upload["id"]}], "prompt": "a studio background"}})
        assert created.status_code == 201, created.text

        storage = pod_b.services.storage
        job = jobs.lease_next_job(pod_b.services.session_factory, "worker", 30)
        dispatcher = Dispatcher(pod_b.services.session_factory, storage, None,
                                DispatcherConfig())
        [key] = dispatcher.store_outputs(job, [image_bytes(16, 16)])
        assert jobs.complete_job(pod_b.services.session_factory, job.id, "worker", [key])

        listed = storage.client.list_objects_v2(Bucket="retouch-cluster")["Contents"]
        assert sorted(o["Key"] for o in listed) == sorted([
            f"accounts/{account_id}/uploads/{upload['id']}.png",
            f"accounts/{account_id}/outputs/{job.id}/1.png"])
        done = pod_a.client.get(f"/api/v1/generations/{job.id}",
                                headers=pod_a.headers(secret)).json()["generation"]
        query = parse_qs(urlsplit(done["output_url"]).query)  # presigned, for the set time
        expires = int(query["Expires"][0]) - time.time() if "Expires" in query \
            else int(query["X-Amz-Expires"][0])
        assert 500 < expires <= 600
        assert httpx.get(done["output_url"]).content == image_bytes(16, 16)
    assert [p for home in homes for p in home.rglob("*") if p.is_file()] == []
