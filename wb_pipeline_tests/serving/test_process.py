"""`benchmarks.serving.ServiceProcess` and `multipart`: how the tests and benchmarks/serving start the service
and build its request bodies (the service itself is tested in test_service.py)."""

import email

import pytest

from benchmarks.serving import ServiceProcess, multipart


def test_multipart_body_reads_back_as_the_fields_and_the_photo():
    body, content_type = multipart({"title": "Платье женское", "price": 1290.5}, b"\xff\xd8jpeg bytes\r\n--x")
    message = email.message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    parts = {part.get_param("name", header="content-disposition"): part for part in message.get_payload()}
    assert parts["title"].get_payload(decode=True).decode() == "Платье женское"
    assert parts["price"].get_payload(decode=True) == b"1290.5"
    assert parts["photo"].get_filename() == "photo.jpg" and parts["photo"].get_content_type() == "image/jpeg"
    assert parts["photo"].get_payload(decode=True) == b"\xff\xd8jpeg bytes\r\n--x"


def test_a_service_that_exits_is_reported_with_its_log(tmp_path):
    """A bad setting makes the service exit at start: `wait` says so with the log's tail, no hang."""
    service = ServiceProcess(
        {"WB_PIPELINE_STORAGE_DIR": tmp_path / "storage", "WB_PIPELINE_SERVE_MAX_UPLOAD_BYTES": "12"},
        log=tmp_path / "serve.log",
    )
    try:
        with pytest.raises(RuntimeError, match="(?s)exited.*use at least 1024 bytes"):
            service.wait(300, statuses=(200, 503))
    finally:
        service.stop()
    assert "WB_PIPELINE_SERVE_MAX_UPLOAD_BYTES=12" in service.log_text()
