"""GCS's answers where gcp-storage-emulator has none (it has no IAM and no other projects): a local endpoint
that replies to the JSON API with GCS's own error bodies, word for word, through the same client."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

NOT_YOURS_403 = (
    "lab@my-lab-project.iam.gserviceaccount.com does not have storage.buckets.get access to the Google Cloud "
    "Storage bucket. Permission 'storage.buckets.get' denied on resource (or it may not exist)."
)
CREATE_403 = (
    "lab@my-lab-project.iam.gserviceaccount.com does not have storage.buckets.create access to the Google Cloud "
    "project. Permission 'storage.buckets.create' denied on resource (or it may not exist)."
)
TAKEN_409 = (
    "The requested bucket name is not available. The bucket namespace is shared by all users of the system. "
    "Please select a different name and try again."
)


@pytest.fixture
def gcs_says() -> Iterator[tuple[dict[str, tuple[int, str]], dict[str, str]]]:
    """A local endpoint answering the JSON API as GCS does when access is denied or the name is taken:
    GET (bucket lookup) and POST (bucket create) get the status and message the test sets."""
    answers: dict[str, tuple[int, str]] = {"GET": (404, "Not Found"), "POST": (500, "unset")}

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            code, message = answers[self.command]
            reason = {403: "forbidden", 404: "notFound", 409: "conflict"}.get(code, "backendError")
            body = json.dumps(
                {"error": {"code": code, "message": message, "errors": [{"message": message, "reason": reason}]}}
            ).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PATCH = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield answers, {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{server.server_address[1]}"}
    server.shutdown()
    server.server_close()
